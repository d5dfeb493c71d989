"""Vector collections: embeddings kept in SQLite, searched exactly with numpy."""
