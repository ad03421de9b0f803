"""Speed and quality benchmarks (not tests), with their recorded results in ``results/``."""
