"""Shared utilities: config loading, safe file I/O, errors, seeding and devices."""
