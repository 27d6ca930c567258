"""Plumbing shared by everything above it: errors, file I/O, locks, checkpoints, config loading, devices, distributed
runs, the command line and run logs."""
