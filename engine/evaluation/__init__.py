"""EDC curves and pAUC (``evaluate.py``)."""
