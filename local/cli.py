"""The `slurm-persist` command: an invoke Program over tasks.py's Collection."""

from __future__ import annotations

import inspect
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from importlib import metadata

from invoke import Program
from invoke.terminals import pty_size

from . import config, tasks


def version() -> str:
    try:
        return metadata.version("slurm-persist")
    except metadata.PackageNotFoundError:  # a checkout run without installing
        return "unknown (not installed)"


# invoke's own options that mean something here; the rest (--pty, --dry,
# --hide, --command-timeout, ...) steer shell commands this tool never runs
# through invoke, and stay out of the help (they are still parsed).
SHOWN = {"help", "version", "list", "print-completion-script"}


class SlurmPersist(Program):
    """invoke's Program, showing only the options a user of this tool has."""

    def print_help(self) -> None:
        print(f"Usage: {self.binary} [--help|--version] <command> [--options] ...")
        print("")
        print("Options:")
        print("")
        self.print_columns([(flags, text) for flags, text in self.initial_context.help_tuples()
                            if SHOWN & set(re.findall(r"--([a-z-]+)", flags))])
        self.list_tasks()

    def print_columns(self, tuples: Sequence[tuple[str, str | None]]) -> None:
        """invoke's two columns, but a flag named in a help text (an option's
        old name) is not broken at its hyphens."""
        width = max(len(name) for name, _ in tuples)
        for name, text in tuples:
            head = f"{self.leading_indent}{name:<{width}}{' ' * self.col_padding}"
            lines = textwrap.wrap(text or "", width=pty_size()[0] - 1, initial_indent=head,
                                  subsequent_indent=" " * len(head), break_on_hyphens=False)
            print("\n".join(lines) if lines else head.rstrip())
        print("")

    def print_task_help(self, name: str) -> None:
        """A task's help, with each option's type from its definition:
        invoke says STRING for every option whose default is None (so that
        an option not given leaves the toml's value alone)."""
        ctx = self.parser.contexts[name]
        doc = inspect.getdoc(self.collection[name]) or ""
        print(f"Usage: {self.binary} {name} [--options]")
        print("")
        for line in doc.splitlines():
            print(self.leading_indent + line if line.strip() else "")
        print("")
        print("Options:")
        self.print_columns([(typed(flags), text) for flags, text in ctx.help_tuples()
                            if not old_name(flags)])


KINDS = {"int": "INT", "float": "SECONDS", "list[str]": "TEXT", "str | None": "TEXT",
         "str": "TEXT"}


def old_name(flags: str) -> bool:
    """The original tool's flag: accepted, and named once in its new flag's help."""
    match = re.search(r"--([a-z-]+)", flags)
    return match is not None and match.group(1).replace("-", "_") in tasks.OLD_FLAGS


def typed(flags: str) -> str:
    """--local-port=STRING -> --local-port=INT, from the option's field."""
    match = re.search(r"--([a-z-]+)=STRING", flags)
    if not match:
        return flags
    flag = match.group(1).replace("-", "_")
    field = config.FIELDS.get(tasks.cli_table()["field_of"].get(flag, flag))
    kind = KINDS.get(str(field.type), "TEXT") if field is not None else "TEXT"
    if field is not None and field.name in ("local_port", "metrics_port"):
        kind = "PORT"
    return flags.replace("=STRING", f"={kind}")


program = SlurmPersist(namespace=tasks.ns, name="slurm-persist", binary="slurm-persist",
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
    try:
        program.run(["slurm-persist", *normalize(sys.argv[1:])])
    except BrokenPipeError:  # `slurm-persist --help | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
