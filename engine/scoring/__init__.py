"""Scoring folders and photos with a quality model (``inference.py``), ONNX backends and export."""
