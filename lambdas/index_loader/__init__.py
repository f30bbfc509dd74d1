"""Index loader Lambda: batch-transform output objects into the run's OpenSearch index."""
