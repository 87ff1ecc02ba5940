"""Command line of the agent.

    python3 -m remote_agent job SERVICE_DIR    run this SLURM job's part of the chain
    python3 -m remote_agent show SERVICE_DIR   print the chain state and endpoint records as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from pathlib import Path

from . import chain, endpoint, spec
from .agent import Agent


def job(service_dir: Path) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s slurm-persist %(message)s")
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        print("slurm-persist: 'job' runs inside a SLURM job (no SLURM_JOB_ID)", file=sys.stderr)
        return 2
    try:
        service = spec.load(service_dir)
    except spec.SpecError as exc:
        logging.error("job=%s state=failed reason=%r", job_id, str(exc))
        return 2
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    user = os.environ.get("SLURM_JOB_USER") or os.environ.get("USER", "")
    agent = Agent(service, job_id, node, user)
    return asyncio.get_event_loop().run_until_complete(agent.run())


def show(service_dir: Path) -> int:
    """One round trip for the local side: chain state and every record."""
    records, errors = [], {}
    for path in sorted((service_dir / endpoint.ENDPOINTS_DIR).glob("*.json")):
        try:
            records.append(json.loads(endpoint.read(path).dumps()))
        except endpoint.EndpointError as exc:
            errors[path.stem] = str(exc)
    state = chain.load(service_dir)
    print(json.dumps({"chain": state.__dict__, "endpoints": records, "errors": errors}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m remote_agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("job", "show"))
    parser.add_argument("service_dir", type=Path)
    args = parser.parse_args(argv)
    return {"job": job, "show": show}[args.command](args.service_dir.expanduser())


if __name__ == "__main__":
    sys.exit(main())
