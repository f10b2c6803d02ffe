"""The paper's ablations in miniature (README.md)."""
