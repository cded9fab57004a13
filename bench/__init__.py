"""Benchmarks: the publisher tick against the per-queue baseline, and time to scale (see docs/performance.md)."""
