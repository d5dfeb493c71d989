"""Questions answered from your documents: a local index and cited answers.

``chunking`` splits files into overlapping line ranges; ``index`` keeps them in
SQLite FTS5 (updated by content hash) and ranks them with BM25; ``vectors`` keeps
their embeddings in the same file; ``retrieval`` ranks passages by BM25, vector
similarity or both (fused by ``fusion``) and applies the relevance cut-off;
``answer`` builds the prompt, asks the model, and keeps only citations that point
at passages the model was given.
"""
