"""Hostile inputs, generated at test time (no committed binaries), each with its expected outcome.

``images`` holds files a decoder or an upload may meet; ``manifests`` holds manifest files an
ingestion may meet. The fuzzers under ``tests/fuzz/`` seed from the same cases, and every crash a
fuzzer finds becomes a case here.
"""
