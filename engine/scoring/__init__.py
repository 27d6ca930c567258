"""Scoring folders and photos with a quality model (``inference.py``), ONNX backends and export."""

#: The inference backends (``backend`` / ``--backend``; :mod:`engine.scoring.backends` runs them). Kept here, where
#: nothing imports torch, so that ``inference.py --help`` lists them at once.
BACKENDS = ("torch", "onnxruntime", "opencv", "auto")
