"""Data: manifest records, importers, the synthetic corpus, query sets and image decoding."""
