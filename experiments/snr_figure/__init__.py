"""The SNR-under-pooling figure (README.md)."""
