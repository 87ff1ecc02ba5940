"""The user's verbs, one function each: deploy, up, status, logs, down.

tasks.py turns command lines into Options and calls these; the module API
(`local.run`, `local.run_sync`) calls them too. With no login node named,
the docker sandbox site is the cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from pathlib import Path
from typing import Optional

from remote_agent import slurm

from . import daemon
from .cluster import Chain
from .config import ConfigError, Options, check_port_free
from .deploy import deploy as deploy_files
from .forwarder import ChainStopped, Forwarder, NeverServed, read_status
from .remote import Site
from .sandbox import JUMP_ALIAS, JUMP_USER, LOGIN_NODES, Sandbox

log = logging.getLogger("slurm_persist")


def resolve(options: Options, project_dir: Path = Path(".")) -> Options:
    """Absolute local paths; the sandbox's site when no login node is named."""
    changes = {"local_hpc_script_dir": str((project_dir / options.local_hpc_script_dir).resolve())}
    if options.ssh_config:
        changes["ssh_config"] = str(Path(options.ssh_config).expanduser().resolve())
    if options.uses_sandbox:
        box = Sandbox.default()
        if not box.is_current():
            log.info("no cluster named: starting the docker sandbox (first time: a few minutes)")
            box.up()
        changes.update(hpc_system_url=LOGIN_NODES[0], fallback_system_url=list(LOGIN_NODES[1:]),
                       jumphost_url=JUMP_ALIAS, jumphost_username=JUMP_USER,
                       username="alice", ssh_config=str(box.ssh_config))
    return dataclasses.replace(options, **changes)


def connect(options: Options) -> Chain:
    return Chain(Site(options), options)


def deploy(options: Options) -> str:
    chain = connect(options)
    try:
        report = deploy_files(chain, Path(options.local_hpc_script_dir))
    finally:
        chain.site.close()
    return (f"deployed {options.name} to {chain.layout.service_dir} on {chain.site.current or '?'}: "
            f"{report.sent} files sent, {report.unchanged} unchanged")


def up(options: Options) -> int:
    """Deploy, make sure exactly one chain runs, then forward until stopped."""
    # A running forwarder holds the lock too (the daemon inherits it), so a
    # held lock with a live pid is the plain "already forwarding" case.
    locked = daemon.hold_lock(options.name)
    pid = daemon.running_pid(options.name)
    if pid:
        print(f"{options.name}: already forwarding on http://127.0.0.1:{options.local_port}/ "
              f"(pid {pid}); `slurm-persist down` stops it")
        return 0
    if not locked:
        print(f"{options.name}: another `up` is starting to forward (no pid written yet); "
              "`slurm-persist status` shows it")
        return 0
    prepare(options)
    if options.daemonize:
        return _start_daemon(options)
    return _foreground(options)


def prepare(options: Options) -> None:
    """Everything before forwarding: a free port, the files, one chain."""
    check_port_free(options.local_port)
    chain = connect(options)
    try:
        if options.copy:
            deploy_files(chain, Path(options.local_hpc_script_dir))
        chain.ensure()
    finally:
        chain.site.close()


async def forward(options: Options) -> None:
    """Forward until cancelled. The chain keeps running afterwards."""
    forwarder = Forwarder(options, connect(options))
    try:
        await forwarder.listen()
        await forwarder.run()
    finally:
        forwarder.chain.site.close()


def _foreground(options: Options) -> int:
    """Forward in this process until SIGINT/SIGTERM, or until there is
    nothing to follow (the chain stopped, or never served)."""
    daemon.write_pid(options.name)
    try:
        asyncio.run(_until_signal(options))
    except (ChainStopped, NeverServed) as exc:
        raise ConfigError(str(exc)) from None
    finally:
        daemon.clear_pid(options.name)
    log.info("service=%s state=forwarder-stopped (the chain keeps running; "
             "`slurm-persist down` stops it)", options.name)
    return 0


async def _until_signal(options: Options) -> None:
    task = asyncio.ensure_future(forward(options))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass


def _start_daemon(options: Options) -> int:
    """Detach the forwarder; come back once it serves, or say why not."""
    pid = daemon.daemonize(options.name, lambda: _foreground(options))
    limit = options.max_attempts_get_server_and_port * options.delay_between_server_and_port
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = read_status(options.name)
        if status and status.pid == pid and status.state == "serving":
            print(f"{options.name}: serving on http://127.0.0.1:{options.local_port}/ "
                  f"(job {status.job_id} on {status.node}; forwarder pid {pid}, "
                  f"log {daemon.log_path(options.name)})")
            return 0
        if not daemon.alive(pid):
            why = status.message if status and status.pid == pid else "see the log"
            raise ConfigError(f"the forwarder exited ({why}); log: {daemon.log_path(options.name)}")
        time.sleep(0.5)
    raise ConfigError(f"not serving after {limit:.0f} s; the forwarder (pid {pid}) keeps "
                      f"trying, see {daemon.log_path(options.name)}")


def down(options: Options) -> str:
    pid = daemon.stop(options.name)
    chain = connect(options)
    try:
        cancelled = chain.cancel_all()
    finally:
        chain.site.close()
    parts = [f"forwarder pid {pid} stopped" if pid else "no forwarder was running",
             f"cancelled jobs {', '.join(cancelled)}" if cancelled else "no jobs were queued"]
    return f"{options.name}: " + "; ".join(parts)


@dataclasses.dataclass
class StatusRow:
    service: str
    chain: str
    job: str
    node: str
    state: str
    uptime: str
    restarts: str
    url: str
    forwarder: str
    reason: str = "-"


def status(options: Options) -> StatusRow:
    chain = connect(options)
    try:
        try:
            jobs = chain.jobs()
        except slurm.SlurmUnknown as exc:
            jobs, chain_text = [], f"unknown ({exc})"
        else:
            chain_text = " ".join(f"{j.job_id}:{j.state}" for j in jobs) or "none"
        snap = chain.snapshot()
        # Nothing serves: is it the home? (A job that cannot write its record
        # is invisible otherwise.) One write check, no SLURM call.
        home = chain.home() if chain.serving(jobs, snap) is None else None
    finally:
        chain.site.close()
    if snap.chain.stopped:
        chain_text = f"stopped: {snap.chain.reason}"
    current = chain.serving(jobs, snap)
    running = next((j for j in jobs if j.running), None)
    local = read_status(options.name)
    pid = daemon.running_pid(options.name)
    return StatusRow(
        service=options.name,
        chain=chain_text,
        job=current.job_id if current else (running.job_id if running else "-"),
        node=current.node if current else (running.node if running else "-"),
        state=current.state if current else (running.state.lower() if running else "-"),
        uptime=_age(current.started) if current else "-",
        restarts=str(current.restarts) if current else "-",
        url=f"http://127.0.0.1:{options.local_port}/",
        forwarder=f"pid {pid} {local.state if local else ''}".strip() if pid else "not running",
        reason=_reason(home, local if pid else None),
    )


def _reason(home, local) -> str:
    """Why it does not serve, when it does not: never an empty answer."""
    if home is not None and not home.writable:
        return home.describe()
    if local is not None and local.state != "serving" and local.message:
        return local.message
    return "-"


def _age(since: float) -> str:
    seconds = int(time.time() - since)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def logs(options: Options, job: Optional[str], lines: int, follow: bool) -> int:
    chain = connect(options)
    try:
        if job is None:
            jobs = chain.jobs()
            running = [j for j in jobs if j.running]
            if not running:
                raise ConfigError("no running job in the chain; name one with --job")
            job = running[-1].job_id
        argv = ["tail", "-n", str(lines), *(["-F"] if follow else []), chain.log_path(job)]
        return chain.site.stream(argv)
    finally:
        chain.site.close()
