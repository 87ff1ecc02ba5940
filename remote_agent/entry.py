"""The way into a job: its gate, on a port of the node (direct mode) or on
a private socket that the job's ssh -R carries to a login node (reverse
mode), and what a record says of it (port, or socket and login node).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, Optional

from .gate import Gate
from .reverse import Reverse

# Reverse mode: how long a job may look for a login node to carry its socket.
REVERSE_TIMEOUT = 300.0


class Entry:
    def __init__(self, gate: Gate, reverse: Optional[Reverse]):
        self.gate, self.reverse = gate, reverse
        self.port: Optional[int] = None
        self.carrying: Optional[asyncio.Future] = None  # reverse mode: the ssh -R keeper

    async def open(self, changed: Callable[[], None]) -> Optional[str]:
        """None once clients can come in; else why they cannot."""
        if self.reverse is None:
            self.port = await self.gate.start()
            return None
        await self.gate.start_unix(str(self.reverse.gate_socket))
        self.carrying = asyncio.ensure_future(self.reverse.run(changed))
        up = asyncio.ensure_future(self.reverse.wait_up(REVERSE_TIMEOUT))
        await asyncio.wait([up, self.carrying], return_when=asyncio.FIRST_COMPLETED)
        if up.done() and up.result():
            return None
        up.cancel()
        if self.carrying.done():
            return str(self.carrying.exception())
        return f"no login node carried the socket within {REVERSE_TIMEOUT:.0f} s"

    def route(self) -> Dict[str, Any]:
        if self.reverse is None:
            return {"port": self.port, "socket": None, "login_node": None}
        hop = self.reverse.current
        if hop is None:  # between two login nodes: no socket to name
            return {"port": None, "socket": None, "login_node": None}
        return {"port": None, "socket": str(hop.socket), "login_node": hop.login}

    def where(self) -> str:
        route = self.route()
        if route["port"] is not None:
            return f"port={route['port']}"
        return f"login={route['login_node']} socket={route['socket']}"

    async def close(self) -> None:
        if self.reverse is None:
            return
        if self.carrying is not None:
            self.carrying.cancel()
            await asyncio.gather(self.carrying, return_exceptions=True)
        await self.reverse.close()
