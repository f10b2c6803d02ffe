"""Speed and memory benchmarks (not tests): train step, sampler, data, plan vs XLA."""
