"""SageMaker training entry point (``train.py``), shipped as the estimator's source folder."""
