"""Baseline servers for the benchmark: the same weights, preprocessing and answer shape as ours."""
