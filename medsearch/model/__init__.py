"""CLIP models: load/save (HF id, folder, s3://), the tiny from-scratch CLIP, and encoders.

This package module stays free of imports so that the torch-free ONNX encoder can live beside
the torch code: import the submodule you need (``medsearch.model.loading``, ``.encoder``, ...).
"""
