"""Tests of the SageMaker batch-transform handler."""
