"""Helpers shared by tests: the in-memory OpenSearch (fake_opensearch)."""
