"""medsearch: medical image search with a fine-tuned CLIP model (BM25, vectors and hybrid)."""

__version__ = "0.1.0"
