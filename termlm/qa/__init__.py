"""Questions answered from your documents: a local full-text index and cited answers.

``chunking`` splits files into overlapping line ranges; ``index`` keeps them in
SQLite FTS5 (updated by content hash) and ranks them with BM25; ``answer``
builds the prompt, asks the model, and keeps only citations that point at
passages the model was given.
"""
