"""Dropout PRNG implementations study (README.md)."""
