"""The user's tasks: what the installed `slurm-persist` command offers (and
`invoke TASK` in a checkout, beside the developer tasks of tasks.py).

    deploy   copy the agent and your service to the cluster
    up       deploy, make sure one chain of jobs runs, forward 127.0.0.1:PORT to it
    status   the chain job by job, the forwarder, and why nothing serves if so
    logs     the current job's output (agent and server), --follow to keep reading
    down     stop the forwarder and cancel every job of the chain
    systemd  user units that keep a service forwarded on a machine for months
    sandbox.up / sandbox.down   the docker mini cluster used when no cluster is named
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import sys
from pathlib import Path
from typing import Any

from invoke import Collection, Exit, task

from remote_agent.slurm import SlurmUnknown

from . import config, inventory, service
from . import doctor as site_check
from . import systemd as units
from .remote import ClusterError, Unreachable
from .rollout import rollout as rollout_flow
from .sandbox import Sandbox, SandboxError
from .tunnel import TunnelError


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or f.name


def flags(group: str) -> tuple[str, ...]:
    """The flags (as parameter names) of the options a group of tasks takes."""
    return tuple(flag_name(f) for f in config.FIELDS.values() if f.metadata["group"] == group)


def as_flag(key: str) -> str:
    """A field's or an old name's spelling on the command line: --login-node."""
    f = config.FIELDS.get(key)
    return "--" + (flag_name(f) if f else key).replace("_", "-")


def _help(f: dataclasses.Field) -> str:
    old = f.metadata["legacy"]
    return f"{f.metadata['help']} (old name: {as_flag(old)})" if old else f.metadata["help"]


def cli_table() -> dict[str, Any]:
    """What the command line needs of the options, from their one definition.
    The original tool's names are flags too ("old": old name -> new flag),
    named once in the new flag's help; config.modern maps them to fields."""
    flagged = [f for f in config.FIELDS.values() if f.metadata["group"]]
    old = {f.metadata["legacy"]: flag_name(f) for f in flagged if f.metadata["legacy"]}
    return {
        "help": {**{flag_name(f): _help(f) for f in flagged},
                 **{o: f"old name of {as_flag(n)}" for o, n in old.items()}},
        "lists": tuple(n for f in flagged if f.type.startswith("list")
                       for n in (flag_name(f), f.metadata["legacy"]) if n),
        "switches": {flag_name(f): f.default for f in flagged if f.type == "bool"},
        "field_of": {flag_name(f): f.name for f in flagged if f.metadata["flag"]},
        "old": old,
    }


_TABLE = cli_table()
OPTION_HELP = _TABLE["help"]
CONNECT, SPEC, FORWARD = (flags(g) for g in (config.CONNECT, config.SPEC, config.FORWARD))
LISTS = _TABLE["lists"]
FLAGS = _TABLE["switches"]
FIELD_OF = _TABLE["field_of"]
OLD_FLAGS = _TABLE["old"]
USER_ERRORS = (config.ConfigError, Unreachable, ClusterError, SlurmUnknown, TunnelError,
               SandboxError)


def service_task(*names: str, help: dict | None = None, start_sandbox: bool = False,
                 name: str | None = None):
    """A task taking the connection options `names` (all by default) next to
    its own; the body gets (c, options, **own). start_sandbox: may start the
    docker sandbox when no cluster is named."""
    names = names or tuple(n for n in OPTION_HELP if n not in OLD_FLAGS)
    names = (*names, *(old for old, new in OLD_FLAGS.items() if new in names))

    def wrap(body):
        own = list(inspect.signature(body).parameters.values())[2:]
        common = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY,
                                    default=FLAGS.get(n)) for n in names]

        @functools.wraps(body)
        def run(c, **kwargs):
            given = {n: kwargs.pop(n, None) for n in names}  # an old name is its own key
            cli = {FIELD_OF.get(n, n): v for n, v in given.items()
                   if v is not None and v != [] and FLAGS.get(n) != v}
            try:
                options = config.load(config.modern(cli, spell=as_flag))
                setup_logging(options.debug)  # the flag or the toml; before resolve logs
                options = service.resolve(options, start_sandbox=start_sandbox)
                return body(c, options, **kwargs)
            except USER_ERRORS as exc:
                raise Exit(f"slurm-persist: error: {exc}", code=2) from None
            except ValueError as exc:  # bad cluster paths and the like, from Layout
                raise Exit(f"slurm-persist: error: {exc}", code=2) from None

        first = inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        run.__signature__ = inspect.Signature([first, *own, *common])
        del run.__wrapped__  # invoke must read the new signature, not body's
        return task(run, name=name, help={**{n: OPTION_HELP[n] for n in names}, **(help or {})},
                    iterable=[n for n in LISTS if n in names], auto_shortflags=False)
    return wrap


def setup_logging(debug: bool, dated: bool = False) -> None:
    """Lines on stderr; dated: with the day, for a daemon's log that spans months."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S" if dated else "%H:%M:%S", force=True)
    if not debug:
        logging.getLogger("paramiko").setLevel(logging.WARNING)


@service_task(*CONNECT, *SPEC, start_sandbox=True)
def deploy(c, options):
    """Copy the agent and your service folder to the cluster (changed files only)."""
    print(service.deploy(options))


@service_task(*CONNECT, *SPEC, *FORWARD, start_sandbox=True)
def up(c, options):
    """Deploy, ensure one chain of jobs per replica, and serve them on 127.0.0.1:PORT."""
    return service.up(options)


@service_task(*CONNECT, *SPEC)
def rollout(c, options):
    """Deploy, then move every slot to the new files with no downtime.

    Slot by slot, a new job starts beside the old one, serves, and the old one
    drains and ends (with one replica, a blue-green switch)."""
    print(rollout_flow(options, service.connected))


@service_task(*CONNECT, "local_port", "local_socket",
              help={"json": "print one JSON object instead of the table"})
def status(c, options, json=False):
    """Show every job of every slot, the local forwarder, and why nothing serves.

    Per job: state, node, time left, next rollover, app hash; for a pending
    job, SLURM's reason and estimated start."""
    report = service.status(options)
    print(report.json() if json else report.text())


@service_task(*CONNECT, "app_dir", "sbatch_option", "mode")
def doctor(c, options):
    """Check the site before the first up, and say how to fix what fails.

    Login nodes, SLURM, time limits, maintenance, and one tiny job (shared
    home, sbatch from jobs, descriptors, who reaches whom)."""
    with service.connected(options) as chain:
        checks = site_check.run(chain, options)
    print(site_check.table(checks))
    if not all(check.ok for check in checks):
        raise Exit(code=1)


@service_task(*CONNECT, name="list")
def list_services(c, options):
    """Every service of yours: its forwarder here, its folder and jobs on the cluster."""
    print(inventory.list_services(options))


@service_task(*CONNECT, "local_port", help={
    "unit_dir": "where to write the units (default ~/.config/systemd/user)"})
def systemd(c, options, unit_dir=None):
    """Write systemd user units (.socket, .service) that keep this service forwarded.

    systemd holds the port; `up` runs in this directory, so its toml applies."""
    target = Path(unit_dir).expanduser() if unit_dir else Path.home() / ".config/systemd/user"
    script = Path(sys.executable).parent / "slurm-persist"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "local.cli"]
    for path in units.write(options, target, Path.cwd(), command):
        print(f"wrote {path}")
    name = units.unit_name(options)
    print(f"then: systemctl --user daemon-reload && systemctl --user enable --now {name}.socket"
          f"\n(and `loginctl enable-linger` so it runs without a login session)")


@service_task(*CONNECT, help={"job": "an earlier job's id (default: the running job)",
                    "lines": "how many lines to show (default 100)",
                    "follow": "keep printing new lines until Ctrl-C"})
def logs(c, options, job=None, lines=100, follow=False):
    """Print the output of the chain's current job (agent and server)."""
    if job is not None and not str(job).isdigit():
        raise Exit(f"slurm-persist: error: --job {job!r} is not a job id", code=2)
    return service.logs(options, job, int(lines), follow)


@service_task(*CONNECT)
def down(c, options):
    """Stop the forwarder and cancel every job of the chain, running and pending."""
    print(service.down(options))


@task
def sandbox_up(c):
    """Build (first time) and start the docker mini cluster; print how to ssh in."""
    setup_logging(False)
    box = Sandbox.default()
    try:
        box.up()
    except SandboxError as exc:
        raise Exit(f"slurm-persist: error: {exc}", code=1) from None
    print(f"sandbox up: ssh -F {box.ssh_config} login1")


@task
def sandbox_down(c):
    """Stop the docker mini cluster and remove its shared /home volume."""
    setup_logging(False)
    Sandbox.default().down()


sandbox = Collection("sandbox")
sandbox.add_task(sandbox_up, "up")  # type: ignore[arg-type]  # @task made them Tasks
sandbox.add_task(sandbox_down, "down")  # type: ignore[arg-type]
ns = Collection(deploy, up, rollout, status, logs, down, list_services, doctor, systemd,
                sandbox)
