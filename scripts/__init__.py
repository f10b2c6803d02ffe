"""User tools run as scripts: sweeps, aggregation, guidance sweeps, samples of any checkpoint."""
