"""The original tool's option names, accepted at the edge only: as keys of
slurm-persist.toml, as flags (with dashes or underscores) and as keywords of
run_sync, each landing in its new field; both names at once is an error."""

import logging
import subprocess
import sys

import pytest

import local
from local import cli, config, service, tasks
from local.config import ConfigError

# old name: (its new field, a value as the toml or run_sync gives it, as a flag gives it)
OLD = {
    "hpc_system_url": ("login_node", "login7", "login7"),
    "fallback_system_url": ("fallback_login_nodes", ["login8"], "login8"),
    "jumphost_url": ("jumphost", "jump9", "jump9"),
    "local_hpc_script_dir": ("app_dir", "myapp", "myapp"),
    "hpc_script_dir": ("cluster_app_dir", "~/apps/x", "~/apps/x"),
    "server_and_port_file": ("service_dir", "~/svc/x", "~/svc/x"),
    "hpc_job_name": ("slurm_job_name", "job-x", "job-x"),
    "max_attempts_get_server_and_port": ("max_looks", 7, "7"),
    "delay_between_server_and_port": ("look_interval", 2.5, "2.5"),
}


def test_every_old_name_is_tested_and_names_a_field():
    assert {old: new for old, (new, _, _) in OLD.items()} == config.LEGACY
    assert not set(config.LEGACY) & set(config.FIELDS)


def toml_value(value):
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


@pytest.mark.parametrize("old", sorted(OLD))
def test_old_toml_key_lands_in_the_new_field(tmp_path, old):
    new, value, _ = OLD[old]
    (tmp_path / "slurm-persist.toml").write_text(f"[services.hpc]\n{old} = {toml_value(value)}\n")
    assert getattr(config.load({}, tmp_path), new) == value


def test_both_names_in_one_table_is_a_one_line_error(tmp_path):
    (tmp_path / "slurm-persist.toml").write_text(
        '[defaults]\nhpc_system_url = "a"\nlogin_node = "b"\n')
    with pytest.raises(ConfigError, match=r"\[defaults\] hpc_system_url is the old name of "
                                          "login_node: give one of them, not both") as info:
        config.load({}, tmp_path)
    assert "\n" not in str(info.value)


def test_names_in_different_places_override_as_usual(tmp_path):
    (tmp_path / "slurm-persist.toml").write_text(
        '[defaults]\nhpc_system_url = "a"\n[services.hpc]\nlogin_node = "b"\n')
    assert config.load({}, tmp_path).login_node == "b"
    assert config.load({"hpc_system_url": "c"}, tmp_path).login_node == "c"


@pytest.fixture
def captured(tmp_path, monkeypatch):
    """What `up` and run_sync would serve, without a cluster."""
    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setattr(service, "resolve", lambda options, **kw: options)
    monkeypatch.setattr(service, "up", lambda options: seen.append(options) or 0)
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    yield seen
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]


@pytest.mark.parametrize("old", sorted(OLD))
def test_old_run_sync_keyword_lands_in_the_new_field(captured, old):
    new, value, _ = OLD[old]
    local.run_sync(**{old: value})
    assert getattr(captured[0], new) == value


def test_both_names_to_run_sync_is_a_one_line_error(captured):
    with pytest.raises(ConfigError, match="hpc_system_url is the old name of login_node") as info:
        local.run_sync(hpc_system_url="a", login_node="b")
    assert "\n" not in str(info.value)
    assert captured == []


def run_cli(*argv):
    program = cli.SlurmPersist(namespace=tasks.ns, name="slurm-persist",
                               binary="slurm-persist", version="test")
    program.run(["slurm-persist", *cli.normalize(list(argv))], exit=False)


@pytest.mark.parametrize("spelling", ["dashes", "underscores", "new"])
@pytest.mark.parametrize("old", sorted(OLD))
def test_old_flag_lands_in_the_new_field(captured, old, spelling):
    new, value, text = OLD[old]
    name = {"dashes": old.replace("_", "-"), "underscores": old,
            "new": tasks.as_flag(new)[2:]}[spelling]
    run_cli("up", f"--{name}", text)
    assert getattr(captured[0], new) == value


def test_both_flags_is_a_one_line_error(captured, capsys):
    run_cli("up", "--login-node", "a", "--hpc_system_url", "b")
    err = capsys.readouterr().err
    assert err == ("slurm-persist: error: --hpc-system-url is the old name of --login-node: "
                   "give one of them, not both\n")
    assert captured == []


def test_both_list_flags_is_an_error_too(captured, capsys):
    run_cli("up", "--fallback-login-node", "a", "--fallback-system-url", "b")
    assert "--fallback-system-url is the old name of --fallback-login-node" in \
        capsys.readouterr().err
    assert captured == []


def test_help_shows_the_new_name_and_the_old_once():
    # A process of its own: invoke hands each task's help out once per process.
    text = subprocess.run([sys.executable, "-m", "local.cli", "up", "--help"],
                          capture_output=True, text=True, check=True).stdout
    for old, (new, _, _) in OLD.items():
        assert tasks.as_flag(new) in text
        assert text.count(tasks.as_flag(old)) == 1, old
        assert f"(old name: {tasks.as_flag(old)})" in " ".join(text.split())
