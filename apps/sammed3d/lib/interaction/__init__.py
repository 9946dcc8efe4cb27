"""Click simulation and interactive evaluation, shared by trainer, scoring and benchmarks."""
