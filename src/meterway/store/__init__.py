"""Storage: the database engine, its URL, waiting for it at start, tables and migrations."""
