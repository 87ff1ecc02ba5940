"""The spec's checks (cluster paths, reverse mode), and that it survives the trip to JSON."""

import pytest

from remote_agent import reverse
from remote_agent import spec as spec_module
from remote_agent.spec import Spec, SpecError

HOME = "/home/a/.slurm-persist"


def spec(**changes) -> Spec:
    values = dict(name="hpc", job_name="sp-hpc", service_dir=f"{HOME}/services/hpc",
                  app_dir=f"{HOME}/services/hpc/app", agent_dir=f"{HOME}/agent",
                  mode="reverse", login_nodes=[["login1", "l1"], ["login2", "l2"]],
                  reverse_key=f"{HOME}/reverse/id_ed25519",
                  known_hosts=f"{HOME}/reverse/known_hosts")
    values.update(changes)
    return Spec(**values)


def test_reverse_spec_round_trips():
    original = spec()
    assert spec_module.loads(original.dumps()) == original


@pytest.mark.parametrize("pair", [["login1"], ["login1", "l1", "x"], ["-oProxyCommand=x", "l1"],
                                  ["login 1", "l1"], ["login1", "l1;rm"], "login1"])
def test_login_nodes_must_be_plain_host_pairs(pair):
    with pytest.raises(SpecError, match="login node"):
        spec(login_nodes=[pair])


def test_reverse_needs_absolute_key_paths():
    with pytest.raises(SpecError, match="reverse_key must be an absolute path"):
        spec(reverse_key="id_ed25519")


def test_a_socket_path_too_long_for_sun_path_is_refused():
    deep = "/home/a/" + "d" * 80
    with pytest.raises(SpecError, match="too long for a Unix socket path"):
        spec(service_dir=deep, app_dir=f"{deep}/app")
    longest = spec().sockets_dir / "99999999999999-9.sock"
    assert len(str(longest)) < 108


def test_direct_mode_ignores_the_reverse_fields():
    assert spec(mode="direct", login_nodes=[], reverse_key="", known_hosts="").mode == "direct"


def test_ssh_checks_host_keys_strictly_with_deploys_files_only():
    argv = reverse.ssh_argv(spec(), "login1", spec().sockets_dir / "7-0.sock", "/tmp/x/gate.sock")
    assert "-N" not in argv  # the session is what turns Nagle off at both ends
    options = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"StrictHostKeyChecking=yes", "BatchMode=yes", "IdentitiesOnly=yes",
            f"UserKnownHostsFile={HOME}/reverse/known_hosts", "ExitOnForwardFailure=yes"} <= options
    assert argv[argv.index("-F") + 1] == "/dev/null"  # no user ssh_config can loosen it
    assert argv[-3:] == ["-R", f"{HOME}/services/hpc/sockets/7-0.sock:/tmp/x/gate.sock", "login1"]


@pytest.mark.parametrize("bad", ["relative/dir", f"{HOME}/a\\b", f"{HOME}/a\nb"])
def test_cluster_paths_that_sbatch_would_misread_are_refused(bad):
    with pytest.raises(SpecError, match="absolute path without backslashes or newlines"):
        spec(mode="direct", service_dir=bad)


def test_cluster_paths_may_hold_spaces_quotes_commas_and_shell_syntax():
    odd = f"{HOME}/it's \"$(x)\"; 100%, a:b"
    assert spec(mode="direct", service_dir=odd, app_dir=f"{odd}/app").service_dir == odd


def test_a_colon_in_a_reverse_mode_service_dir_is_refused():
    with pytest.raises(SpecError, match="colon"):
        spec(service_dir=f"{HOME}/a:b", app_dir=f"{HOME}/app")
