"""Bounded by construction: log lines, pending connections, descriptors."""

from __future__ import annotations

import asyncio
import errno
import resource
import socket

from hypothesis import given
from hypothesis import strategies as st

from remote_agent import limits
from remote_agent.admission import PER_CONNECTION, Admission
from remote_agent.gate import Gate, preamble
from remote_agent.joblog import Capped, Summariser
from remote_agent.limits import Budget
from remote_agent.listener import Listener, tcp_socket
from remote_agent.relay import Held
from remote_agent.server import Upstream


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def summariser():
    lines: list[str] = []
    clock = Clock()
    return Summariser(lines.append, window=10, clock=clock), lines, clock


def test_a_flood_is_one_line_then_one_per_window():
    events, lines, clock = summariser()
    for second in range(60):
        clock.now = second
        for _ in range(1000):
            events.note("gate=reject reason=no-secret", "peer=10.0.0.9")
        events.flush()
    assert lines[0] == "gate=reject reason=no-secret peer=10.0.0.9"
    assert len(lines) == 6  # the first, then one per ended 10 s window
    counted = sum(int(line.split("count=")[1].split()[0]) for line in lines[1:])
    assert counted + 1 + events.pending() == 60_000
    assert lines[1] == "gate=reject reason=no-secret count=10999 window=10s"


def test_a_lone_event_is_printed_again_after_a_quiet_window():
    events, lines, clock = summariser()
    events.note("record=unwritable", "error=ENOSPC")
    clock.now = 11
    events.flush()
    clock.now = 30
    events.note("record=unwritable", "error=ENOSPC")
    assert lines == ["record=unwritable error=ENOSPC"] * 2


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 5)), max_size=300))
def test_lines_are_bounded_by_keys_and_windows_never_by_events(script):
    events, lines, clock = summariser()
    for key, step in script:
        clock.now += step
        events.note(f"event={key}")
        events.flush()
    windows = clock.now / 10 + 1
    assert len(lines) <= 4 * (2 * windows + 1)


def test_capped_stops_at_its_budget_and_counts_the_rest():
    out: list[bytes] = []
    capped = Capped(out.append, cap=100, name="server")
    for _ in range(50):
        capped.write(b"0123456789")
    assert capped.written == 100 and capped.dropped == 400
    assert sum(map(len, out)) < 200 and b"state=capped" in out[-1]


def test_capped_survives_a_full_disk():
    def full(data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    capped = Capped(full, cap=100, name="agent")
    capped.write(b"x" * 10)
    assert capped.failed == 10 and capped.written == 0


def test_budget_keeps_the_reserve():
    budget = Budget(limit=1024, baseline=20, reserve=128)
    assert budget.connections == (1024 - 128 - 20) // 2
    assert budget.room(in_use=2 * budget.connections - 2)
    assert not budget.room(in_use=2 * budget.connections)


def test_raise_nofile_reaches_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        before, now, top = limits.raise_nofile()
        assert before == min(256, hard) and now == top == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_flooding_peer_pushes_out_its_own_oldest_not_others():
    admission = Admission(Budget(100_000, 0), total=10, per_peer=4)
    admission.arrive("owner", "10.0.0.1")
    dropped = [admission.arrive(f"flood{i}", "10.0.0.66") for i in range(20)]
    assert all(not d for d in dropped[:4]) and dropped[4] == ["flood0"]
    assert admission.is_pending("owner") and admission.pending == 5


def test_pending_total_drops_the_oldest_of_all():
    admission = Admission(Budget(100_000, 0), total=3, per_peer=3)
    for i in range(3):
        admission.arrive(i, f"peer{i}")
    assert admission.arrive(3, "peer3") == [0]
    admission.authenticated(1)
    assert admission.pending == 2 and admission.active == 1


def test_no_room_once_the_budget_is_spent():
    admission = Admission(Budget(limit=10 + 6 * PER_CONNECTION, baseline=10, reserve=0))
    for i in range(5):
        assert admission.room()
        admission.arrive(i, "p")
        admission.authenticated(i)
    assert admission.room()
    admission.arrive(5, "p")
    assert not admission.room()
    admission.leave(0)
    assert admission.room()



def upstream_at(port: int):
    return Upstream(port=port).connect()


async def test_listener_pauses_on_emfile_instead_of_spinning():
    """The kernel says EMFILE: one line, a pause with backoff, and accepting
    resumes by itself once descriptors are free again."""
    lines: list[str] = []
    served = []

    class Serve(Held):
        def data_received(self, data):
            served.append(data)
            self.transport.close()

    async def take(conn):
        await asyncio.get_running_loop().connect_accepted_socket(Serve, conn)

    listener = Listener(tcp_socket("127.0.0.1", 0), take, Summariser(lines.append))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hogs = []
    client = socket.create_connection(("127.0.0.1", listener.port))
    client.sendall(b"hello")
    try:
        # Use up every descriptor but none: accept() must fail with EMFILE.
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_descriptors() + 8, hard))
        try:
            while True:
                hogs.append(socket.socket())
        except OSError:
            pass
        listener.start()
        await asyncio.sleep(0.5)
        assert served == [] and listener.paused >= 2
        assert len(lines) == 1 and "accept=paused error=EMFILE" in lines[0]
    finally:
        for hog in hogs:
            hog.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    for _ in range(40):
        if served:
            break
        await asyncio.sleep(0.1)
    assert served == [b"hello"]
    listener.close()
    client.close()


async def test_gate_holds_a_flood_and_still_lets_the_owner_in():
    async def upstream_handler(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(upstream_handler, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    lines: list[str] = []
    gate = Gate("s" * 32, lambda: upstream_at(port),
                Summariser(lines.append))
    gate_port = await gate.start("127.0.0.1")
    flood = [await asyncio.open_connection("127.0.0.1", gate_port) for _ in range(400)]
    await asyncio.sleep(0.3)
    assert gate.admission.pending <= 64  # all from one address: the per-peer cap
    reader, writer = await asyncio.open_connection("127.0.0.1", gate_port)
    writer.write(preamble("s" * 32) + b"ping")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.endswith(b"ping")
    assert len(lines) <= 2, lines
    for _, w in flood:
        w.close()
    await gate.drain(1)
    upstream.close()


# -- a cluster condition is not a crash loop ----------------------------------

from local.conditions import Backoff, Home, judge  # noqa: E402
from remote_agent.slurm import Job, interpret_ended, squeue_argv  # noqa: E402


def job(state: str) -> Job:
    return Job("42", "sp-x", state, "node1", "None", "5:00", "N/A", "N/A")


def test_a_full_home_is_the_cluster_whatever_the_job_says():
    full = Home(False, "ENOSPC", "/home/alice/.slurm-persist/services/x/logs", 0)
    verdict = judge(full, job("FAILED"), "no output file: SLURM could not start it")
    assert verdict.cluster and verdict.home
    assert "ENOSPC" in verdict.reason and "0 bytes free" in verdict.reason


def test_a_failed_node_is_the_cluster():
    for state in ("NODE_FAIL", "BOOT_FAIL", "PREEMPTED"):
        verdict = judge(Home(True), job(state), "")
        assert verdict.cluster and not verdict.home and state in verdict.reason


def test_a_job_that_failed_on_its_own_is_the_service():
    for state in ("FAILED", "COMPLETED", "TIMEOUT", "OUT_OF_MEMORY", "CANCELLED"):
        verdict = judge(Home(True), job(state), "module load python/9.9: no such module")
        assert not verdict.cluster and verdict.reason.startswith("module load")
    assert not judge(None, None, "x").cluster  # nothing known: counted, as before


def test_backoff_doubles_to_half_an_hour_and_starts_over_once_served():
    backoff = Backoff()
    delays = [backoff.next() for _ in range(14)]
    assert delays[:5] == [1, 2, 4, 8, 16] and delays[-1] == 1800 and max(delays) == 1800
    backoff.reset()
    assert backoff.next() == 1


def test_ended_jobs_are_asked_for_with_every_state():
    assert "--states=all" in squeue_argv("alice", job_id="42", ended=True)
    assert "--states=all" not in squeue_argv("alice", job_id="42")
    line = "42|sp-x|NODE_FAIL|node1|NodeDown|5:00|2026-11-25T10:00:00|2026-11-25T09:55:00\n"
    assert interpret_ended(0, line, "").state == "NODE_FAIL"
    assert interpret_ended(1, "", "slurm_load_jobs error: Invalid job id specified") is None
    assert interpret_ended(0, "garbage\n", "") is None
