"""Benchmarks of slurm-persist on the sandbox cluster: `invoke bench`."""
