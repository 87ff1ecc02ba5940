"""Command line of the agent.

    python3 -m remote_agent job SERVICE_DIR    run this SLURM job's part of the chain
    python3 -m remote_agent show SERVICE_DIR   print the chain state and endpoint records as JSON
    python3 -m remote_agent stop SERVICE_DIR   mark the chain stopped (before `down` cancels it)
    python3 -m remote_agent reset SERVICE_DIR  clear the stop mark and the crash count (`up`)
    python3 -m remote_agent check SERVICE_DIR  can jobs write there? (JSON)
    python3 -m remote_agent lock SERVICE_DIR OWNER    take the one-`up`-at-a-time lock
    python3 -m remote_agent unlock SERVICE_DIR OWNER  give it back
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional

from . import chain, endpoint, home, joblog, layout, limits, private, slots, spec
from . import lock as locking
from .agent import Agent


def job(service_dir: Path) -> int:
    # The job log is SLURM's output file, our fd 1, in the shared home: capped.
    handler = joblog.CappedHandler(joblog.Capped(joblog.write_fd(1), joblog.AGENT_CAP, "agent"))
    handler.setFormatter(logging.Formatter("%(asctime)s slurm-persist %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        print("slurm-persist: 'job' runs inside a SLURM job (no SLURM_JOB_ID)", file=sys.stderr)
        return 2
    before, soft, hard = limits.raise_nofile()
    logging.info("job=%s nofile_soft=%d->%d nofile_hard=%d connections_max=%d", job_id,
                 before, soft, hard, limits.Budget.of_this_process().connections)
    unsafe = private.problems(private.service_paths(service_dir))
    if unsafe:
        logging.error("job=%s state=refused reason=%r", job_id, "; ".join(unsafe))
        return 2
    try:
        service = spec.load(service_dir)
    except spec.SpecError as exc:
        logging.error("job=%s state=failed reason=%r", job_id, str(exc))
        return 2
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    user = os.environ.get("SLURM_JOB_USER") or os.environ.get("USER", "")
    name = os.environ.get("SLURM_JOB_NAME", service.job_name)
    slot = slots.slot_of(service.job_name, name)
    if slot is None:  # a --job-name of the user's own: the chain cannot find its jobs
        logging.error("job=%s state=failed reason=%r", job_id, f"job name {name!r} is not "
                      f"{service.job_name!r} or a replica's; drop --job-name from the options")
        return 2
    return asyncio.run(_run_agent(service, job_id, node, user, slot))


async def _run_agent(service: spec.Spec, job_id: str, node: str, user: str, slot: int) -> int:
    # Built here, in the running loop: on 3.8/3.9 its asyncio.Event binds
    # the loop current at construction.
    return await Agent(service, job_id, node, user, slot).run()


def show(service_dir: Path) -> int:
    """One round trip for the local side: chain state and every record."""
    unsafe = private.problems(private.service_paths(service_dir))
    if unsafe:
        print(json.dumps({"unsafe": unsafe}))
        return 3
    records, errors = [], {}
    addresses: Dict[str, Optional[str]] = {}
    for path in sorted(layout.endpoints(service_dir).glob("*.json")):
        if not path.stem.isdigit():  # a .tmp-*.json is a record being written
            continue
        try:
            record = endpoint.read(path)
        except endpoint.EndpointError as exc:
            errors[path.stem] = str(exc)
            continue
        if record.port is not None:
            if record.host not in addresses:
                addresses[record.host] = address_of(record.host)
            record = replace(record, address=addresses[record.host])
        records.append(json.loads(record.dumps()))
    state = chain.load(service_dir)
    print(json.dumps({"chain": state.__dict__, "endpoints": records, "errors": errors}))
    return 0


def address_of(host: str) -> Optional[str]:
    """The IPv4 address sshd on this login node connects to first for host.
    Resolved once per look here instead of once per new connection by sshd:
    on the sandbox, where Docker's resolver answers, that lookup cost 0.2 ms
    of CPU (19-22% of a core at ~1,000 new connections/s) and the p50 of a
    new connection fell from 4.0 to 2.5 ms without it. None when it does
    not resolve (sshd then looks the name up itself, as before)."""
    try:  # IPv4: the gate listens on 0.0.0.0
        found = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return str(found[0][4][0]) if found else None


def check(service_dir: Path) -> int:
    """Can jobs write in the service dir? What SLURM's output file and the
    records need: a real write, since a full disk still passes access()."""
    print(json.dumps(home.check(service_dir)))
    return 0


def lock(service_dir: Path, owner: str) -> int:
    """Exit 0 holding the lock, 3 when another held it for LOCK_WAIT seconds."""
    if not service_dir.is_dir():
        print(f"no service dir {service_dir}: deploy first", file=sys.stderr)
        return 2
    return 0 if locking.acquire(service_dir, owner, locking.WAIT) else LOCK_HELD


def unlock(service_dir: Path, owner: str) -> int:
    return 0 if locking.release(service_dir, owner) else 1


def stop(service_dir: Path) -> int:
    state = chain.load(service_dir)
    chain.save(service_dir, chain.ChainState(state.failed_jobs, True, "stopped by down"))
    return 0


def reset(service_dir: Path) -> int:
    chain.save(service_dir, chain.ChainState())
    return 0


COMMANDS = {"job": job, "show": show, "stop": stop, "reset": reset, "check": check}
LOCKING = {"lock": lock, "unlock": unlock}
LOCK_HELD = 3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m remote_agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted([*COMMANDS, *LOCKING]))
    parser.add_argument("service_dir", type=Path)
    parser.add_argument("owner", nargs="?", help="lock/unlock: who holds it")
    args = parser.parse_args(argv)
    if args.command in LOCKING:
        if not args.owner:
            parser.error(f"{args.command} needs an OWNER")
        return LOCKING[args.command](args.service_dir.expanduser(), args.owner)
    return COMMANDS[args.command](args.service_dir.expanduser())


if __name__ == "__main__":
    sys.exit(main())
