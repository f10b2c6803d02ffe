"""The resolution study behind docs/resolution.md (README.md)."""
