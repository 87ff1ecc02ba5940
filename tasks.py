"""Tasks of this checkout, for `invoke TASK`: the user's (local/tasks.py, the
installed `slurm-persist` command) and the developers' own.

    bench          measure slurm-persist against a hand-made ssh -L on the sandbox
    faults-table   run the fault-injection suite and write its table into README.md
    diagram        render docs/architecture.dot to the SVG the README shows
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from invoke import Collection, Exit, task

from local import config, service
from local.sandbox import Sandbox
from local.tasks import (
    USER_ERRORS,
    deploy,
    doctor,
    down,
    list_services,
    logs,
    rollout,
    sandbox,
    setup_logging,
    status,
    systemd,
    up,
)


@task(help={"short": "small sizes and windows: checks that it runs (CI), not how fast",
            "out": "where to write the JSON results (default bench-results.json)"})
def bench(c, short=False, out="bench-results.json"):
    """Benchmark on the sandbox: throughput, latency, start-up, recovery, SLURM load, cost."""
    from bench.bench import main as run_bench
    from bench.tools import ToolMissing, require
    setup_logging(False)
    try:
        require("ab", "wrk")  # before the sandbox starts
        options = service.resolve(config.load({}), start_sandbox=True)
        print(run_bench(options, Sandbox.default(), short, Path(out)))
    except (*USER_ERRORS, ToolMissing) as exc:
        raise Exit(f"slurm-persist: error: {exc}", code=2) from None


@task
def diagram(c):
    """Render docs/architecture.dot to docs/architecture.svg (needs Graphviz's dot)."""
    try:
        subprocess.run(["dot", "-Tsvg", "-o", "docs/architecture.svg", "docs/architecture.dot"],
                       check=True)
    except FileNotFoundError:
        raise Exit("slurm-persist: error: Graphviz is not installed (apt-get install graphviz)",
                   code=2) from None
    print("docs/architecture.svg written")


FAULTS_START, FAULTS_END = "<!-- faults:start -->", "<!-- faults:end -->"


@task(help={"report": "use the rows a run with SLURM_PERSIST_FAULT_REPORT=FILE wrote, "
                      "instead of running tests/faults now"})
def faults_table(c, report=None):
    """Run tests/faults and replace the table between the README's fault markers."""
    if not Path("tests/faults").is_dir() or not Path("README.md").is_file():
        raise Exit("slurm-persist: error: run faults-table from a clone of the repository", code=2)
    if report is None:
        with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as handle:
            report = handle.name
        env = {**os.environ, "SLURM_PERSIST_FAULT_REPORT": report}
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/faults"], env=env)
        if tests.returncode:
            raise Exit("slurm-persist: error: the fault suite failed; README left as it was",
                       code=1)
    rows = [json.loads(line) for line in Path(report).read_text().splitlines() if line.strip()]
    lines = ["| fault | recovery | measured (s) | requests failed |", "|---|---|---|---|"]
    lines += [f"| {r['fault']} | {r['recovery']} | {r['seconds']} | {r['failed']} of "
              f"{r['requests']}{_kinds(r.get('errors'))} |" for r in rows]
    readme = Path("README.md")
    block = f"{FAULTS_START}\n" + "\n".join(lines) + f"\n{FAULTS_END}"
    readme.write_text(re.sub(re.escape(FAULTS_START) + ".*?" + re.escape(FAULTS_END),
                             lambda _: block, readme.read_text(), flags=re.S))
    print(f"README.md: {len(rows)} faults")


def _kinds(errors: list[str] | None) -> str:
    return f" ({', '.join(errors)})" if errors else ""


ns = Collection(deploy, up, rollout, status, logs, down, list_services, doctor, systemd, bench,
                faults_table, diagram, sandbox)
