"""64 px vs 16 px throughput (README.md)."""
