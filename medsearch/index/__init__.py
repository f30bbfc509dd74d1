"""Search indexes: the protocol every engine implements, the embedded engine and OpenSearch."""
