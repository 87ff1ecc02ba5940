"""The user's verbs, one function each: deploy, up, status, logs, down.

tasks.py turns command lines into Options and calls these; the module API
(`local.run`, `local.run_sync`) calls them too. With no login node named,
the docker sandbox site is the cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import uvloop

from remote_agent import joblog, slurm
from remote_agent.slurm import capacity

from . import daemon, leftovers, orphaned
from . import sockets as local_sockets
from .cluster import Chain
from .config import ConfigError, Options, check_port_free
from .deploy import deploy as deploy_files
from .forwarder import ChainStopped, Forwarder, NeverServed
from .remote import HostKeyRefused, Site, Unreachable
from .report import JobLine, Report, age, forwarder_line, local_url, maintenance, reason
from .sandbox import JUMP_ALIAS, JUMP_USER, LOGIN_NODES, Sandbox
from .status_file import read_status

log = logging.getLogger("slurm_persist")


def resolve(options: Options, project_dir: Path = Path("."),
            start_sandbox: bool = False) -> Options:
    """Absolute local paths; the sandbox's site when no login node is named.
    Only `up` and `deploy` start the sandbox: `status` or `down` must not
    build a cluster just to report on it."""
    changes: dict[str, Any] = {
        "app_dir": str((project_dir / options.app_dir).resolve())}
    if options.ssh_config:
        changes["ssh_config"] = str(Path(options.ssh_config).expanduser().resolve())
    if options.uses_sandbox:
        box = Sandbox.default()
        if not box.is_current():
            if not start_sandbox:
                raise ConfigError("no cluster named, and the docker sandbox is not running: "
                                  "`slurm-persist sandbox.up` starts it, or name a login node "
                                  "with --login-node")
            log.info("no cluster named: starting the docker sandbox (first time: a few minutes)")
            box.up()
        changes.update(login_node=LOGIN_NODES[0], fallback_login_nodes=list(LOGIN_NODES[1:]),
                       jumphost=JUMP_ALIAS, jumphost_username=JUMP_USER,
                       username="alice", ssh_config=str(box.ssh_config))
    return dataclasses.replace(options, **changes)


def connect(options: Options) -> Chain:
    return Chain(Site(options), options)


@contextmanager
def connected(options: Options) -> Iterator[Chain]:
    """A chain whose SSH connections are closed when the block ends; a
    command that hangs is cut loose meanwhile (local.watchdog)."""
    chain = connect(options)
    chain.site.watchdog.start()
    try:
        yield chain
    finally:
        chain.site.watchdog.stop()
        chain.site.close()


def deploy(options: Options) -> str:
    with connected(options) as chain:
        report = deploy_files(chain, Path(options.app_dir))
    return (f"deployed {options.name} to {chain.layout.service_dir} on "
            f"{chain.site.current or '?'}: {report.sent} files sent, "
            f"{report.unchanged} unchanged")


def up(options: Options) -> int:
    """Deploy, make sure exactly one chain runs, then forward until stopped."""
    # A running forwarder holds the lock too (the daemon inherits it), so a
    # held lock with a live pid is the plain "already forwarding" case.
    locked = daemon.hold_lock(options.name)
    passed = local_sockets.from_systemd()  # socket activation: the port is bound already
    pid = daemon.running_pid(options.name)
    if pid:
        print(f"{options.name}: already forwarding on {options.url} "
              f"(pid {pid}); `slurm-persist down` stops it")
        return 0
    if not locked:
        print(f"{options.name}: another `up` is starting to forward (no pid written yet); "
              "`slurm-persist status` shows it")
        return 0
    prepare(options, port_check=not passed)
    if options.daemonize:
        return _start_daemon(options)
    return foreground(options, passed or None)


def prepare(options: Options, port_check: bool = True) -> None:
    """Everything before forwarding: a free port, the files, one chain."""
    if port_check and not options.local_socket:
        check_port_free(options.local_port)
    with connected(options) as chain:
        if options.copy:
            deploy_files(chain, Path(options.app_dir))
        chain.ensure()


async def forward(options: Options, sockets=None, supervisor: int = 0,
                  stopping: asyncio.Event | None = None) -> None:
    """Forward until cancelled. The chain keeps running afterwards. A
    supervisor's worker starts a new one if that is killed (orphaned.py),
    not once stopping is set."""
    # connected(): its watchdog cuts a hung command loose, or ends this process.
    with connected(options) as chain:
        forwarder = Forwarder(options, chain, supervisor)
        try:
            await forwarder.listen(sockets)
        except OSError as exc:  # another forwarder took the port since prepare() looked
            raise ConfigError(f"{options.address}: {exc.strerror}; "
                              "another forwarder serves it (`slurm-persist status`)") from None
        adopting = asyncio.ensure_future(orphaned.watch(
            options, sockets, supervisor, forwarder.status_file, stopping or asyncio.Event())) \
            if supervisor else None
        try:
            await forwarder.run()
        finally:
            if adopting is not None:
                adopting.cancel()


def foreground(options: Options, sockets=None, supervisor: int = 0) -> int:
    """Forward in this process until SIGINT/SIGTERM (SIGHUP too, from a
    terminal), or until there is nothing to follow (the chain stopped, or
    never served). Sockets: a supervisor's or systemd's (LISTEN_FDS), else
    bound here. SIGUSR1 writes every thread's stack to stderr (the log, in
    a daemon): a forwarder that stops saying anything can then say where
    it waits."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if not supervisor:
        daemon.write_pid(options.name)
    try:
        # uvloop: the forwarder's event loop in C. Under ab -c50 the stdlib
        # loop's own machinery was most of the forwarder's CPU (py-spy).
        uvloop.run(_until_signal(options, sockets, supervisor))
    except (ChainStopped, NeverServed) as exc:
        raise ConfigError(str(exc)) from None
    finally:
        if not supervisor:
            daemon.clear_pid(options.name)
    log.info("service=%s state=forwarder-stopped (the chain keeps running; "
             "`slurm-persist down` stops it)", options.name)
    return 0


async def _until_signal(options: Options, sockets, supervisor: int) -> None:
    stopping = asyncio.Event()
    task = asyncio.ensure_future(forward(options, sockets, supervisor, stopping))

    def stop() -> None:
        # Once: a closed terminal sends SIGHUP twice (the shell's, then the
        # kernel's), and a second cancel cut the masters' closing short.
        if not stopping.is_set():
            stopping.set()
            task.cancel()
    loop = asyncio.get_running_loop()
    # SIGHUP too, from a terminal: closing it must not kill the forwarder
    # before it ends its ssh masters (in sessions of their own, local.tunnel).
    # Ignored it stays ignored: a daemon (local.daemon), `nohup up &`.
    hangup = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    for sig in (signal.SIGINT, signal.SIGTERM, *hangup):
        loop.add_signal_handler(sig, stop)
    try:
        await task
    except asyncio.CancelledError:
        pass


def _start_daemon(options: Options) -> int:
    """Detach the forwarder; come back once it serves, or say why not."""
    pid = daemon.spawn(options.name, "local.supervisor", orphaned.handing(options))
    limit = options.max_looks * options.look_interval
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = read_status(options.name)
        if status and pid in (status.pid, status.supervisor) and status.state == "serving":
            print(f"{options.name}: serving on {options.url} "
                  f"(job {status.job_id} on {status.node}; forwarder pid {pid}, "
                  f"log {daemon.log_path(options.name)})")
            return 0
        if not daemon.alive(pid):
            why = (status.message if status and pid in (status.pid, status.supervisor)
                   else "see the log")
            raise ConfigError(f"the forwarder exited ({why}); log: {daemon.log_path(options.name)}")
        time.sleep(0.5)
    status = read_status(options.name)
    said = status is not None and pid in (status.pid, status.supervisor)
    if not said:  # not one look came back: where does the worker wait? (SIGUSR1: its stacks)
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
    raise ConfigError(f"not serving after {limit:.0f} s; the forwarder (pid {pid}) keeps "
                      f"trying, see {daemon.log_path(options.name)}" +
                      ("" if said else " (no look at the cluster has come back yet; its "
                       "threads' stacks are at the end)"))


def down(options: Options) -> str:
    pid = daemon.stop(options.name)
    with connected(options) as chain:
        cancelled = chain.cancel_all()
    left = leftovers.after_down(options)
    parts = [f"forwarder pid {pid} stopped" if pid else "no forwarder was running",
             f"cancelled jobs {', '.join(cancelled)}" if cancelled else "no jobs were queued"]
    if left:
        parts.append(f"ended {left} ssh masters a killed forwarder left")
    return f"{options.name}: " + "; ".join(parts)


def status(options: Options) -> Report:
    with connected(options) as chain:
        try:
            jobs = chain.jobs()
        except HostKeyRefused:
            raise  # someone in the middle, maybe: not a reason to ask login2 for the rest
        except (slurm.SlurmUnknown, Unreachable) as exc:  # Unreachable: squeue cut off on each
            said = " | ".join(str(exc).splitlines())  # one row, whatever SLURM printed
            jobs, chain_text = [], f"unknown ({said})"
        else:
            chain_text = " ".join(f"{j.job_id}:{j.state}" for j in jobs) or "none"
        snap = chain.snapshot()
        # Nothing serves: is it the home? (A job that cannot write its record
        # is invisible otherwise.) One write check, no SLURM call.
        home = chain.home() if not chain.serving(jobs, snap) else None
        shown = chain.site.run(capacity.reservations_argv())
        reservations = capacity.parse_reservations(shown.stdout) if shown.returncode == 0 else []
    if snap.chain.stopped:
        chain_text = f"stopped: {snap.chain.reason}"
    serving = chain.serving(jobs, snap)
    current = serving[min(serving)] if serving else None
    running = next((j for j in jobs if j.running), None)
    local = read_status(options.name)
    pid = daemon.running_pid(options.name)
    return Report(
        service=options.name,
        chain=chain_text,
        job=current.job_id if current else (running.job_id if running else "-"),
        node=current.node if current else (running.node if running else "-"),
        state=current.state if current else (running.state.lower() if running else "-"),
        uptime=age(current.started) if current else "-",
        restarts=str(current.restarts) if current else "-",
        url=local_url(options, local) if pid else "-",
        forwarder=forwarder_line(pid, local),
        reason=reason(home, local if pid else None),
        maintenance=maintenance(reservations),
        jobs=[JobLine.of(j, snap.endpoints.get(j.job_id), options.overlap_minutes,
                         options.warn_seconds, chain.slot(j) or 0) for j in jobs],
    )


def logs(options: Options, job: str | None, lines: int, follow: bool) -> int:
    with connected(options) as chain:
        if job is None:
            jobs = chain.jobs()
            running = [j for j in jobs if j.running]
            if not running:
                raise ConfigError("no running job in the chain; name one with --job")
            job = running[-1].job_id
        path = chain.log_path(job)
        # --follow waits for a log still to come (a pending job); without
        # it, a log that is not there says why rather than tail's own error.
        if not follow and chain.site.run(["test", "-e", path]).returncode == 1:
            raise ConfigError(f"job {job} has no log ({path}): it never started here, or it "
                              f"ended among all but the newest {joblog.KEEP_LOGS}, whose logs "
                              "are pruned")
        return chain.site.stream(["tail", "-n", str(lines), *(["-F"] if follow else []), path])
