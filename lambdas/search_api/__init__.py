"""Search API Lambda: the medsearch API on API Gateway (OpenSearch engine, ONNX encoder)."""
