"""Where the CPU goes, from two readings of /proc (in-memory here): each
process's ticks by its role, per request, and the rounds' medians."""

from __future__ import annotations

from bench.procs import role
from bench.sidebyside import TICK_US, median, per_request, summary


def test_each_process_has_the_role_its_command_line_names():
    assert role(7, "python slurm-persist up --name b", forwarder=7) == "forwarder"
    assert role(8, "python3 -m remote_agent job /home/alice/x", forwarder=7) == "gate"
    assert role(9, "sshd: alice@notty", forwarder=7) == "sshd"
    assert role(10, "ssh -F cfg -o ProxyCommand=x login1", forwarder=7) == "ssh"
    assert role(11, "/venv/bin/python hpc.py", forwarder=7) == "server"
    assert role(12, "/usr/sbin/docker-proxy -proto tcp", forwarder=7) == "docker"
    assert role(13, "slurmd -D", forwarder=7) == "other"


def test_ticks_per_request_by_role_a_new_process_from_zero_a_reused_pid_too():
    before = {7: (100, "slurm-persist up"), 8: (50, "python3 -m remote_agent job"),
              9: (5, "sshd: alice")}
    after = {7: (110, "slurm-persist up"), 8: (70, "python3 -m remote_agent job"),
             9: (3, "slurm-persist-free command"),  # pid 9 ended and was reused
             10: (4, "sshd: bob")}  # started meanwhile
    cpu = per_request(before, after, tool_s=0.5, requests=1000, forwarder=7)
    assert cpu["forwarder"] == round(10 * TICK_US / 1000, 1)
    assert cpu["gate"] == round(20 * TICK_US / 1000, 1)
    assert cpu["sshd"] == round(4 * TICK_US / 1000, 1)
    assert cpu["other"] == round(3 * TICK_US / 1000, 1)
    assert cpu["load tool"] == 500.0
    assert cpu["total"] == round((37 * TICK_US + 500_000) / 1000, 1)


def round_of(rate: float, pinned: bool = True) -> dict:
    tool = {"req_per_s": rate, "requests": 10}
    tools = ("ab", "wrk", "ab-pinned", "wrk-pinned") if pinned else ("ab", "wrk")
    one = {"paths": {p: {"mb_per_s": rate} for p in ("slurm-persist", "ssh -L (baseline)")},
           "tools": {p: dict.fromkeys(tools, tool) for p in ("slurm-persist",
                                                             "ssh -L (baseline)")},
           "cpu": {p: dict.fromkeys(tools, {"gate": rate}) for p in ("slurm-persist",
                                                                     "ssh -L (baseline)")}}
    if pinned:
        one["pinned_unmovable"] = ["iou-wrk-7"] if rate == 3 else []
    return one


def test_the_summary_is_each_figures_median_over_the_rounds():
    got = summary([round_of(3), round_of(1), round_of(2)])
    assert got["paths"]["slurm-persist"] == {"mb_per_s": 2}
    assert got["tools"]["ssh -L (baseline)"]["wrk"] == {"req_per_s": 2, "requests": 10}
    assert got["tools"]["slurm-persist"]["wrk-pinned"] == {"req_per_s": 2, "requests": 10}
    assert got["tools"]["ssh -L (baseline)"]["ab-pinned"] == {"req_per_s": 2, "requests": 10}
    assert got["cpu"]["slurm-persist"]["ab"] == {"gate": 2}
    assert got["pinned_unmovable"] == ["iou-wrk-7"]
    assert median([{"a": 1, "name": "x"}, {"a": 5, "name": "y"}]) == {"a": 3}


def test_a_round_without_the_pinned_run_leaves_it_out_and_says_why():
    skipped = {**round_of(1, pinned=False), "pinned_skipped": "found no gate"}
    got = summary([round_of(3), skipped])
    assert set(got["tools"]["slurm-persist"]) == {"ab", "wrk"}
    assert got["pinned_skipped"] == "found no gate" and "pinned_unmovable" not in got
