"""Test suite of medsearch (mirrors the source layout)."""
