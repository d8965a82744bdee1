"""Benchmarks of a warmfleet cluster against bare baselines; see bench/README.md."""
