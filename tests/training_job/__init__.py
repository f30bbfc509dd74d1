"""Tests of the SageMaker training entry point."""
