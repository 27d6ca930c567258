"""The workflows: training, denoiser training, scoring (backends, photos), DifFIQA labels and evaluation.

Each subpackage holds one job next to its config schema; the scripts at the top level parse arguments, load the
config and call the workflow. Imports go downward only: ``engine`` -> ``model``, ``dataset`` -> ``utils``.
"""
