"""The `slurm-persist` command: an invoke Program over tasks.py's Collection."""

from __future__ import annotations

import re
import sys
from importlib import metadata

from invoke import Program

from . import tasks


def version() -> str:
    try:
        return metadata.version("slurm-persist")
    except metadata.PackageNotFoundError:  # a checkout run without installing
        return "unknown (not installed)"


program = Program(namespace=tasks.ns, name="slurm-persist", binary="slurm-persist",
                  version=version())


def normalize(argv: list[str]) -> list[str]:
    """The original tool spelt some flags with underscores
    (--delay_between_server_and_port); accept both spellings."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            flag, sep, value = arg.partition("=")
            arg = re.sub("_", "-", flag) + sep + value
        out.append(arg)
    return out


def main() -> None:
    program.run(["slurm-persist", *normalize(sys.argv[1:])])


if __name__ == "__main__":
    main()
