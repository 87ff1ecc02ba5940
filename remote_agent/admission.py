"""Who may hold the gate's descriptors.

A connection that has not presented the secret costs a descriptor and
proves nothing: any user of the cluster can open thousands (1,400 were
enough to kill an agent on the sandbox). Such *pending* connections are
capped in total and per peer address, oldest dropped first, so a flood
pushes out the flood and not the owner's next connection, which presents
its secret in its first bytes and leaves the pending set within one read.
Authenticated connections are bounded only by the descriptor budget.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Hashable, List

from .limits import Budget

# The owner's forwarder opens at most 32 at once per route (SETUP_CONCURRENCY),
# each gone from this set within one read; 256 leaves room for several
# forwarders and login nodes while a flood holds the rest.
PENDING_TOTAL = 256
# In direct mode every user of a login node shares its address: a per-peer
# cap keeps one host from taking all the pending room.
PENDING_PER_PEER = 64
# Each connection counts two descriptors from its accept on: the one it
# has and the server-side one it takes once authenticated.
PER_CONNECTION = 2


class Admission:
    def __init__(self, budget: Budget, total: int = PENDING_TOTAL,
                 per_peer: int = PENDING_PER_PEER):
        self.budget, self.total, self.per_peer = budget, total, per_peer
        self._pending: OrderedDict[Hashable, str] = OrderedDict()  # oldest first
        self._by_peer: Counter = Counter()
        self._active: set = set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._active)

    def room(self) -> bool:
        """Whether to accept one more connection now."""
        held = (len(self._pending) + len(self._active)) * PER_CONNECTION
        return self.budget.room(held, PER_CONNECTION)

    def arrive(self, key: Hashable, peer: str) -> List[Hashable]:
        """Register a new pending connection; returns those to drop for it."""
        evict: List[Hashable] = []
        if self._by_peer[peer] >= self.per_peer:
            evict.append(next(k for k, p in self._pending.items() if p == peer))
        elif len(self._pending) >= self.total:
            evict.append(next(iter(self._pending)))
        for old in evict:
            self._forget_pending(old)
        self._pending[key] = peer
        self._by_peer[peer] += 1
        return evict

    def is_pending(self, key: Hashable) -> bool:
        return key in self._pending

    def authenticated(self, key: Hashable) -> None:
        if key in self._pending:
            self._forget_pending(key)
            self._active.add(key)

    def leave(self, key: Hashable) -> None:
        if key in self._pending:
            self._forget_pending(key)
        self._active.discard(key)

    def _forget_pending(self, key: Hashable) -> None:
        peer = self._pending.pop(key)
        self._by_peer[peer] -= 1
        if not self._by_peer[peer]:
            del self._by_peer[peer]
