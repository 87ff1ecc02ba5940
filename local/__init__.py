"""slurm-persist, laptop side: keep a service that runs in a chain of SLURM
jobs reachable on 127.0.0.1:PORT.

From Python, with the command line's options as keyword arguments::

    from local import run_sync
    run_sync(login_node="login1.example.org", local_port=8642, username="alice",
             app_dir="hpc", jumphost="jump.example.org", jumphost_username="alice",
             retries=3)

The original tool's names (hpc_system_url=, local_hpc_script_dir=, ...) are
accepted too, as on the command line and in slurm-persist.toml.

`run_sync` blocks while forwarding (like `slurm-persist up`); `run` is the
same for an asyncio program and returns when the task running it is cancelled.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import config, daemon, service


def _options(kwargs: dict[str, Any]) -> config.Options:
    return service.resolve(config.load(kwargs), start_sandbox=True)


def run_sync(**kwargs: Any) -> int:
    """Deploy, ensure the chain and forward until interrupted (SIGINT/SIGTERM)."""
    return service.up(_options(kwargs))


async def run(**kwargs: Any) -> None:
    """The forwarder inside the caller's event loop; cancel the task to stop."""
    options = await asyncio.to_thread(_options, kwargs)
    # One forwarder per service, as for `up`: it owns the service's ssh
    # sockets, and ends the masters a killed one left there.
    if not daemon.hold_lock(options.name):
        raise config.ConfigError(f"{options.name}: another forwarder serves it "
                                 "(`slurm-persist status`)")
    await asyncio.to_thread(service.prepare, options)
    await service.forward(options)


__all__ = ["run", "run_sync"]
