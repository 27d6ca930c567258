"""DifFIQA quality labels (``diffiqa_score.py``)."""
