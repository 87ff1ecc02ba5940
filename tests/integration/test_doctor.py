"""`doctor` on the sandbox: all green, and exactly the check that a fault breaks."""

from __future__ import annotations

import pytest

from helpers import HPC, cli, site_args

pytestmark = pytest.mark.cluster


def doctor(cluster, *extra: str):
    return cli("doctor", *site_args(cluster, "doc"), "--local-hpc-script-dir", HPC, *extra,
               timeout=300)


def failing(result) -> list[str]:
    return [line.split(None, 2)[1] + " " + line.split(None, 3)[2]
            for line in result.stdout.splitlines() if line.startswith("FAIL")]


def test_the_sandbox_passes_every_check(cluster):
    result = doctor(cluster)
    print(result.stdout)
    assert result.returncode == 0 and failing(result) == [], result.stdout + result.stderr
    for name in ("login node login1", "SLURM answers", "partition time limit",
                 "maintenance ahead", "a job runs", "shared home", "sbatch from a job",
                 "descriptor limit in a job", "login node reaches the job",
                 "job reaches the login nodes"):
        assert f"ok    {name}" in result.stdout, name


def test_a_partition_limit_below_the_jobs_time_is_the_one_failure(cluster):
    """hpc/slurm.sbatch asks for 30 minutes; the partition allows 10."""
    cluster.exec("slurmctld", "scontrol", "update", "PartitionName=debug", "MaxTime=10")
    try:
        result = doctor(cluster)
    finally:
        cluster.exec("slurmctld", "scontrol", "update", "PartitionName=debug", "MaxTime=INFINITE")
    print(result.stdout)
    assert result.returncode == 1
    assert failing(result) == ["partition time"], result.stdout
    assert "--time is 30 min, debug's MaxTime 10 min" in result.stdout
    assert "fix: ask for --time=10 or less, or another partition" in result.stdout
