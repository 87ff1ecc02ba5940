"""A maintenance reservation ahead: jobs are shortened to end before it
(--time-min), not held behind it, and status says how long the gap is."""

from __future__ import annotations

import pytest

from helpers import Up, cli, site_args, wait_for

pytestmark = pytest.mark.cluster


def test_a_job_is_shortened_to_end_before_maintenance(cluster, alice, tmp_path):
    """hpc/slurm.sbatch asks for 30 minutes; the nodes are reserved from 4
    minutes from now. Without --time-min the job would wait until after."""
    cluster.exec("slurmctld", "scontrol", "create", "reservation", "ReservationName=maint",
                 "StartTime=now+4minutes", "Duration=10", "Nodes=ALL", "Users=root",
                 "Flags=MAINT,IGNORE_JOBS")
    up = Up(cluster, "maint", tmp_path)
    try:
        up.wait_serving(timeout=120)
        job = alice.out("squeue -h -n sp-maint -t RUNNING -o %i")
        limit = alice.out(f"squeue -h -j {job} -o %l")
        status = cli("status", *site_args(cluster, "maint"), "--local-port", str(up.port)).stdout
        print(f"maintenance: job={job} limit={limit} status={status!r}")
        minutes = int(limit.split(":")[0]) if limit.count(":") == 1 else 0
        assert minutes < 5, limit  # ends before the reservation, not after 30 min
        row = next(line for line in status.splitlines() if line.startswith("maintenance"))
        assert "maint " in row and "the service has a gap of 0h10m" in row
    finally:
        up.stop()
        cluster.exec("slurmctld", "scontrol", "delete", "ReservationName=maint", check=False)
    wait_for("no job left", lambda: not alice.out("squeue -h -n sp-maint -o %i"), timeout=60)
