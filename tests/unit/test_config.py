import json
import logging
import os
import socket

import pytest
from invoke import Context

from local import config, orphaned, paths, tasks
from local.config import FIELDS, ConfigError, Options


def write(tmp_path, text):
    (tmp_path / "slurm-persist.toml").write_text(text)
    return tmp_path


def test_defaults_without_file(tmp_path):
    options = config.load({}, tmp_path)
    assert options.name == "hpc" and options.local_port == 8642 and options.uses_sandbox
    assert options.job_name == "sp-hpc"


def test_file_then_command_line(tmp_path):
    write(tmp_path, """
[defaults]
hpc_system_url = "login1.example.org"
fallback_system_url = ["login2.example.org"]
local_port = 9000
[services.model]
local_port = 9100
sbatch_options = ["--time=01:00:00"]
""")
    options = config.load({"name": "model"}, tmp_path)
    assert options.login_nodes == ["login1.example.org", "login2.example.org"]
    assert options.local_port == 9100
    assert options.sbatch_options == ["--time=01:00:00"]
    options = config.load({"name": "model", "local_port": "9200"}, tmp_path)
    assert options.local_port == 9200


@pytest.mark.parametrize("text, message", [
    ("[services.hpc\nlocal_port = 1", "not valid TOML"),
    ("[services.hpc]\nlocal_prot = 1", "unknown keys: local_prot"),
    ("[services.hpc]\nlocal_port = 'x'", "expected int"),
    ("[services.hpc]\nlocal_port = 70000", "choose 1-65535"),
    ("services = 3", "must be a table"),
    ("[services.hpc]\nhpc_system_url = '-oProxyCommand=evil'", "is not a host name"),
    ("[services.hpc]\nsbatch_options = [\"--time=1\\n#SBATCH --x\"]", "write it as --name=value"),
])
def test_bad_files_give_one_line(tmp_path, text, message):
    write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        config.load({}, tmp_path)
    assert "\n" not in str(info.value)


def test_unknown_service_is_named(tmp_path):
    write(tmp_path, "[services.model]\nlocal_port = 9000\n")
    with pytest.raises(ConfigError, match=r"no \[services.other\] \(known: model\)"):
        config.load({"name": "other"}, tmp_path)


@pytest.mark.parametrize("name", ["a b", "x;rm", "$(id)", "-rf", "", "a/b", "a\nb"])
def test_hostile_service_names_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="service name"):
        config.load({"name": name}, tmp_path)


def test_busy_port_is_named():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match=f"local-port {port} is already in use"):
            config.check_port_free(port)


def test_script_dir_without_sbatch_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no slurm.sbatch there"):
        config.check_script_dir(tmp_path)


@pytest.fixture
def root_logging():
    """The tasks set up logging with force=True: put the test run's back."""
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]


@pytest.mark.parametrize("text, flag, level", [
    ("debug = true", False, logging.DEBUG),
    ("debug = false", False, logging.INFO),
    ("debug = false", True, logging.DEBUG),
])
def test_debug_from_the_file_or_the_flag(tmp_path, monkeypatch, root_logging, text, flag, level):
    write(tmp_path, f'[defaults]\nhpc_system_url = "login1"\n{text}\n')
    monkeypatch.chdir(tmp_path)
    seen = []

    @tasks.service_task("name", "debug")
    def probe(c, options):
        seen.append((options.debug, logging.getLogger().level))
    probe(Context(), name=None, debug=flag)
    assert seen == [(level == logging.DEBUG, level)]


def test_state_dirs_are_private_even_if_made_loose_before(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    (tmp_path / "slurm-persist" / "services").mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / "slurm-persist", 0o755)
    path = paths.state_dir("svc")
    for folder in (path, path.parent, path.parent.parent):
        assert os.stat(folder).st_mode & 0o777 == 0o700, folder


def test_state_dirs_made_fresh_are_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = paths.state_dir("svc")
    for folder in (path, path.parent, path.parent.parent):
        assert os.stat(folder).st_mode & 0o777 == 0o700, folder


def test_every_option_reaches_the_daemon_unchanged():
    """`up --daemonize` hands the options to a new interpreter as JSON
    (orphaned.handing, supervisor.main): an option JSON cannot carry
    (a Path, a tuple) would fail there, or arrive changed."""
    samples = {"str": "a b", "str | None": "x", "list[str]": ["--a", "b c"], "bool": True,
               "int": 7, "float": 2.5}
    options = Options(**{name: samples[str(f.type)] for name, f in FIELDS.items()})
    assert Options(**json.loads(orphaned.handing(options))["options"]) == options
