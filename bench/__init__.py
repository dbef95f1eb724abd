"""Benchmark scripts; each prints its figures and records them in bench/RESULTS.md."""
