"""Benchmarks (pytest-benchmark), mirroring the package's modules; see benchmarks/README.md."""
