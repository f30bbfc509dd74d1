"""SageMaker batch-transform handler (``inference.py``), shipped as the model's code folder."""
