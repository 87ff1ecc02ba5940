"""The control plane's choice of login node: round-robin retries, and a
node that failed tried last for a while. Actions here stand in for what
runs on a node; the SSH side is tested on the docker cluster."""

import pytest

from local import logins, remote
from local.config import Options
from remote_agent import slurm


@pytest.fixture
def site(monkeypatch):
    monkeypatch.setattr(remote.time, "sleep", lambda seconds: None)
    return remote.Site(Options(login_node="login1", fallback_login_nodes=["login2", "login3"],
                               retries=2))


def failing_on(*dead: str, tried: list):
    def action(host: str) -> str:
        tried.append(host)
        if host in dead:
            raise OSError("Timeout opening channel.")
        return host
    return action


def test_a_dead_first_node_costs_one_attempt_not_all_retries(site):
    tried = []
    assert site._on_any(failing_on("login1", tried=tried)) == "login2"
    assert tried == ["login1", "login2"]


def test_a_node_that_failed_is_tried_last_until_it_answers_again(site):
    site._on_any(failing_on("login1", tried=[]))
    assert site.order() == ["login2", "login3", "login1"]
    tried = []
    site._on_any(failing_on("login2", "login3", tried=tried))
    assert tried == ["login2", "login3", "login1"]
    assert site.order()[0] == "login1"


def test_suspicion_fades(site, monkeypatch):
    site.failed("login1")
    later = remote.time.monotonic() + remote.SUSPECT_SECONDS + 1
    monkeypatch.setattr(remote.time, "monotonic", lambda: later)
    assert site.order() == ["login1", "login2", "login3"]


def test_every_round_is_retried_then_each_node_named_once(site):
    tried = []
    with pytest.raises(remote.Unreachable) as err:
        site._on_any(failing_on("login1", "login2", "login3", tried=tried))
    assert len(tried) == 9 and tried[:3] == ["login1", "login2", "login3"]
    assert str(err.value).count("login1:") == 1 and "Timeout opening channel." in str(err.value)


def test_a_refused_key_is_not_retried(site):
    tried = []

    def action(host):
        tried.append(host)
        if host == "login1":
            raise remote.paramiko.AuthenticationException("no")
        return host
    assert site._on_any(action) == "login2"
    tried.clear()
    with pytest.raises(remote.Unreachable):
        site._on_hosts(["login1"], action)
    assert tried == ["login1"]


def test_a_changed_host_key_stops_everything(site):
    def action(host):
        raise remote.HostKeyUnknown(f"host key of {host} is not in known_hosts")
    with pytest.raises(remote.HostKeyRefused, match="login1"):
        site._on_any(action)


class FakeConnection:
    """What Site asks of a Fabric Connection, minus the network."""

    def __init__(self, host: str, opened: list, gateway=None, refuse: bool = False):
        self.host, self.gateway, self.refuse = host, gateway, refuse
        self.transport = type("Transport", (), {})()
        self.is_connected = False
        opened.append(self)

    def open(self):
        if self.refuse:
            raise OSError(f"{self.host}: Connection refused")
        self.is_connected = True

    def close(self):  # as Fabric's: the gateway is left as it is
        self.is_connected = False


@pytest.fixture
def jumped(monkeypatch):
    monkeypatch.setattr(remote.time, "sleep", lambda seconds: None)
    site = remote.Site(Options(login_node="login1", fallback_login_nodes=["login2"],
                               jumphost="jump", retries=0))
    opened = []
    monkeypatch.setattr(site._logins, "_make", lambda host, user, gateway=None: FakeConnection(
        host, opened, gateway, refuse=host == "login1"))
    monkeypatch.setattr(logins, "Connection", FakeConnection)
    return site, opened


def test_a_failover_leaves_no_jumphost_connection_open(jumped):
    site, opened = jumped
    site._on_any(lambda host: site._connection(host).host)  # login1 refuses, login2 answers
    # paramiko's own wait for a channel is an hour; the hop's and the node's are bounded.
    assert [(c.host, c.transport.channel_timeout) for c in opened if c.is_connected] == [
        ("jump", logins.CONNECT_TIMEOUT), ("login2", logins.CONNECT_TIMEOUT)]
    site.close()
    assert [c.host for c in opened if c.is_connected] == []
    assert [c.host for c in opened if c.host == "jump"] == ["jump", "jump"]


MUNGE = "squeue: error: Munge encode failed: (Did you start munged?)\nProtocol authentication error"


def answers(site, monkeypatch, said: dict, tried: list):
    """Each login node answers a command as said names it (exit status, stderr)."""
    def run_on(host, command, stdin, timeout, once):
        tried.append(host)
        returncode, stderr = said[host]
        return remote.Result(returncode, "" if returncode else "12|...", stderr, host)
    monkeypatch.setattr(site, "_run_on", run_on)


def local_fault(result):
    return slurm.failed_on_node(result.returncode, result.stderr)


def test_a_command_failing_for_a_reason_of_its_node_is_run_on_the_next(site, monkeypatch):
    tried = []
    answers(site, monkeypatch, {"login1": (1, MUNGE), "login2": (0, ""), "login3": (0, "")}, tried)
    result = site.run(["squeue"], elsewhere=local_fault)
    assert (result.host, result.returncode, tried) == ("login2", 0, ["login1", "login2"])
    assert site.order() == ["login2", "login3", "login1"]


def test_slurms_own_answer_is_not_asked_again_elsewhere(site, monkeypatch):
    tried = []
    answers(site, monkeypatch, {"login1": (1, "Invalid job id specified")}, tried)
    assert site.run(["scancel", "9"], elsewhere=local_fault).returncode == 1
    assert tried == ["login1"]


def test_when_every_node_fails_so_the_last_answer_comes_back(site, monkeypatch):
    tried = []
    answers(site, monkeypatch, {h: (1, MUNGE) for h in ("login1", "login2", "login3")}, tried)
    result = site.run(["squeue"], elsewhere=local_fault)
    assert result.returncode == 1 and "Munge" in result.stderr
    assert tried == ["login1", "login2", "login3"]


def test_a_transport_dying_under_a_closing_channel_prints_no_traceback():
    """Seen: sshd killed mid-command, and `status` printed paramiko's EOFError."""
    import threading

    import paramiko

    from local.logins import _dead_transport

    class Dying(paramiko.Transport):
        def __init__(self):
            threading.Thread.__init__(self)
    printed: list = []

    def hook(exc_type, thread):
        args = threading.ExceptHookArgs((exc_type, exc_type(), None, thread))
        _dead_transport(args, default=printed.append)
    hook(EOFError, Dying())
    assert printed == []
    hook(ZeroDivisionError, threading.Thread())  # any other thread's error still prints
    assert len(printed) == 1
