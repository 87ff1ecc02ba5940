"""The `slurm-persist` command: an invoke Program over tasks.py's Collection."""

from __future__ import annotations

import re
import sys

from invoke import Program

import tasks

VERSION = "0.1.0"
program = Program(namespace=tasks.ns, name="slurm-persist", binary="slurm-persist",
                  version=VERSION)


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
