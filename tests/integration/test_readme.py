"""The README, followed literally, so it cannot rot: its two set-up
commands, its example config, its flags and its Python call."""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import wait_for
from local import config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BIN = str(Path(sys.executable).parent / "slurm-persist")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[str]:
    return [line.split("#")[0].strip() for line in block.splitlines()
            if line.split("#")[0].strip()]


SETUP = commands(blocks("bash")[0])


def test_exactly_two_setup_commands_and_ci_runs_the_second():
    assert SETUP == ["bash dev.sh up", "bash dev.sh test"]
    assert "bash dev.sh test" in (ROOT / ".ci" / "run").read_text()


def test_example_config_loads(tmp_path):
    (tmp_path / "slurm-persist.toml").write_text(blocks("toml")[0])
    options = config.load({"name": "model"}, tmp_path)
    assert options.login_nodes == ["login1.hpc.example.org", "login2.hpc.example.org"]
    assert options.sbatch_options and options.overlap_minutes == 10


def test_every_flag_in_the_examples_exists():
    for line in commands(blocks("bash")[1]):
        words = line.split()
        assert words[0] == "slurm-persist"
        task = words[1]
        helptext = subprocess.run([BIN, task, "--help"], capture_output=True, text=True).stdout
        for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert flag in helptext, f"{line}: {flag} is not a flag of {task}"


def test_flags_named_in_prose_exist():
    """The paragraph that lists the original tool's flags names real ones."""
    paragraph = README[README.index("The same tasks run as"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    helptext = subprocess.run([BIN, "up", "--help"], capture_output=True, text=True).stdout
    flags = set(re.findall(r"`(--[a-z][a-z-]+)", paragraph))
    assert len(flags) >= 17
    for flag in flags:
        assert flag.replace("--no-", "--") in helptext.replace("--[no-]", "--"), flag


def test_run_sync_example_takes_real_options():
    tree = ast.parse(blocks("python")[0])
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "run_sync")
    assert {k.arg for k in call.keywords} <= set(config.FIELDS)


@pytest.mark.cluster
def test_main_command_in_a_fresh_clone(tmp_path):
    """`bash dev.sh up` in a clone of HEAD serves the example on 127.0.0.1:8642."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    log = tmp_path / "up.log"
    proc = subprocess.Popen(SETUP[0].split(), cwd=clone, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        def serving():
            if proc.poll() is not None:
                raise AssertionError(f"{SETUP[0]} exited {proc.returncode}: {log.read_text()}")
            result = subprocess.run(["curl", "-sf", "http://127.0.0.1:8642/"],
                                    capture_output=True, text=True)
            return result.stdout if result.returncode == 0 else None
        body = wait_for("the example service on 127.0.0.1:8642", serving, timeout=600, every=2)
        assert '"node": "node' in body
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=30)
        venv_bin = clone / ".venv" / "bin" / "slurm-persist"
        if venv_bin.exists():
            subprocess.run([str(venv_bin), "down"], cwd=clone, capture_output=True)
            subprocess.run([str(venv_bin), "sandbox.down"], cwd=clone, capture_output=True)
        shutil.rmtree(clone, ignore_errors=True)
