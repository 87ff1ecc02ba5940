"""The one-`up`-at-a-time lock of a service dir, with real threads and files."""

from __future__ import annotations

import os
import threading
import time

from remote_agent import lock


def test_of_many_at_once_exactly_one_holds_it(tmp_path):
    held, barrier = [], threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        if lock.acquire(tmp_path, f"up-{i}", wait=0):
            held.append(i)
    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(held) == 1


def test_the_next_one_gets_it_once_released(tmp_path):
    assert lock.acquire(tmp_path, "a", wait=0)
    later = []
    waiter = threading.Thread(target=lambda: later.append(lock.acquire(tmp_path, "b", wait=5)))
    waiter.start()
    time.sleep(0.3)
    assert later == []
    assert not lock.release(tmp_path, "b")  # not b's to give back
    assert lock.release(tmp_path, "a")
    waiter.join()
    assert later == [True]


def test_a_dead_holders_lock_is_broken_after_stale_seconds(tmp_path):
    assert lock.acquire(tmp_path, "dead", wait=0)
    old = time.time() - lock.STALE - 1
    os.utime(tmp_path / lock.LOCK, (old, old))
    assert lock.acquire(tmp_path, "alive", wait=1)
    assert not lock.release(tmp_path, "dead") and lock.release(tmp_path, "alive")
    assert [p.name for p in tmp_path.iterdir()] == [f"{lock.LOCK}.stale-dead"]


def test_a_second_breaker_cannot_move_the_fresh_lock_aside(tmp_path):
    """Both found the dead lock stale; the first broke it and took a new one."""
    assert lock.acquire(tmp_path, "dead", wait=0)
    old = time.time() - lock.STALE - 1
    os.utime(tmp_path / lock.LOCK, (old, old))
    lock._break_if_stale(tmp_path / lock.LOCK)  # the first breaker
    assert lock.acquire(tmp_path, "first", wait=0)
    # The second one's look was taken before: same holder name, its move fails.
    (tmp_path / lock.LOCK / "owner").write_text("dead")  # as it read it
    os.utime(tmp_path / lock.LOCK, (old, old))
    lock._break_if_stale(tmp_path / lock.LOCK)
    assert (tmp_path / lock.LOCK).is_dir()


def test_a_lock_its_holder_never_named_is_broken_once_stale(tmp_path):
    """mkdir went through, the owner file did not (a full home, a crash)."""
    (tmp_path / lock.LOCK).mkdir()
    old = time.time() - lock.STALE - 1
    os.utime(tmp_path / lock.LOCK, (old, old))
    assert lock.acquire(tmp_path, "next", wait=1)


def test_its_holder_asking_again_has_it_and_no_one_else(tmp_path):
    """Its first answer cut off, `up` asks again on the next login node."""
    assert lock.acquire(tmp_path, "a", wait=0)
    assert lock.acquire(tmp_path, "a", wait=0)
    assert not lock.acquire(tmp_path, "b", wait=0)
    assert lock.release(tmp_path, "a") and lock.acquire(tmp_path, "b", wait=0)
