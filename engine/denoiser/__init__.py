"""DifFIQA denoiser training (``train_diffusion.py``)."""
