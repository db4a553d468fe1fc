"""Benchmarks, the soak and their shared load tools (`make bench`, `make soak`)."""
