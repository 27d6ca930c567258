"""eDifFIQA distillation (``train.py``) and its training data (``prepare_data.py``)."""
