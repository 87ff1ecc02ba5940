"""slurm-persist's agent: runs inside every SLURM job of a service's chain.

Standard library only, Python 3.8+: it runs on whatever python3 an HPC node
has. The local side imports its format modules (endpoint, spec, slurm) so
both ends share one definition of each.
"""
