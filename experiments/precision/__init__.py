"""bfloat16 vs float32 study (README.md)."""
