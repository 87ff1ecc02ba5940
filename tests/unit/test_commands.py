"""Where a command's connection failed decides whether another login node
may run it: before its exec request went out (nothing ran), or after
(it may have run, or may still). Fakes stand in for paramiko's channel and
transport; the frozen sshd itself is in test_local."""

import pytest

from local import commands, logins, remote
from local.config import Options


class Transport:
    """A connection's transport: live, dead, or dying (its thread ends
    once waited for, as paramiko's does after closing the channels)."""

    def __init__(self, state: str):
        self.state = state

    def is_active(self):
        return self.state != "dead"

    def join(self, seconds):
        if self.state == "dying":
            self.state = "dead"

    def is_alive(self):
        return self.state != "dead"


class Unanswered:
    """A channel whose exec request fails."""

    def __init__(self, state: str):
        self.transport = Transport(state)

    def get_transport(self):
        return self.transport

    def exec_command(self, command):
        raise remote.paramiko.SSHException("Channel closed.")


@pytest.mark.parametrize("state", ["dead", "dying"])
def test_a_connection_lost_once_the_exec_request_went_out_is_told(state):
    """The request may sit unread in a frozen sshd's socket and run when it resumes."""
    runner = commands.Runner.__new__(commands.Runner)
    runner.channel = Unanswered(state)
    with pytest.raises(commands.SentThenLost, match="Channel closed"):
        runner.send_start_message("sbatch job.sh")


def test_a_refusal_on_a_connection_that_stands_ran_nothing():
    runner = commands.Runner.__new__(commands.Runner)
    runner.channel = Unanswered("live")
    with pytest.raises(remote.paramiko.SSHException) as refused:
        runner.send_start_message("sbatch job.sh")
    assert not isinstance(refused.value, commands.SentThenLost)


def test_every_connection_runs_its_commands_so():
    made = logins.Logins(Options(login_node="login1"))._make("login1", "alice")
    assert isinstance(made._remote_runner(), commands.Runner)


@pytest.fixture
def site(monkeypatch):
    monkeypatch.setattr(remote.time, "sleep", lambda seconds: None)
    return remote.Site(Options(login_node="login1", fallback_login_nodes=["login2"], retries=0))


def connected(site, monkeypatch, first: str) -> list:
    """login1's first command fails as first says; any later one answers."""
    tried = []

    def out(exited):
        return type("Out", (), {"exited": exited, "stdout": "12\n", "stderr": ""})()

    class Connection:
        is_connected = True

        def __init__(self, host):
            # dying: the channel closed before the transport knew (paramiko)
            self.transport = Transport("live" if first == "signalled" else "dying")

        def run(self, command, **kwargs):
            tried.append(command)
            if len(tried) > 1:
                return out(0)
            if first == "after-its-request":
                raise commands.SentThenLost("Channel closed.")
            if first == "writing-its-stdin":  # invoke's, for its writer thread's OSError
                raise commands.ThreadException([])
            return out(-1)  # Fabric's status for a channel closed without one
    monkeypatch.setattr(site._logins, "get", Connection)
    return tried


@pytest.mark.parametrize("once", [True, False])
@pytest.mark.parametrize("lost", ["after-its-request", "while-it-ran", "writing-its-stdin"])
def test_only_a_command_that_must_run_once_comes_back_cut_off(site, monkeypatch, once, lost):
    """sbatch run again on the next node could run twice; a read is asked there."""
    tried = connected(site, monkeypatch, lost)
    result = site.run(["sbatch", "job.sh"], once=once)
    if once:
        assert (result.host, result.returncode, len(tried)) == ("login1", -1, 1)
        assert "closed before sbatch ended" in result.stderr and result.stdout == (
            "12\n" if lost == "while-it-ran" else "")  # a job id printed before stays
    else:
        assert (result.host, result.returncode, len(tried)) == ("login2", 0, 2)
    assert site.order()[-1] == "login1"  # tried last for a while, either way


@pytest.mark.parametrize("once", [True, False])
def test_a_command_ended_by_a_signal_on_a_live_connection_is_its_answer(
        site, monkeypatch, once):
    """No exit status, the connection fine (a login node's OOM killer): not
    the node's fault, and not run again anywhere."""
    tried = connected(site, monkeypatch, "signalled")
    result = site.run(["squeue"], once=once)
    assert (result.host, result.returncode, len(tried)) == ("login1", -1, 1)
    assert "without an exit status" in result.stderr
    assert site.order()[0] == "login1"


class Recorder:
    """A Site that answers every command, noting which must run once."""

    def __init__(self, stdout: str = ""):
        self.stdout, self.once = stdout, []

    def run(self, argv, stdin=None, once=False, **kwargs):
        self.once.append((argv[0], once))
        return remote.Result(0, self.stdout, "", "login1")


def test_appending_the_reverse_mode_key_runs_once():
    """Appended twice, the key would be listed twice in authorized_keys."""
    from local import reverse
    site = Recorder()
    reverse.authorize(site, "/h/.ssh/authorized_keys", "ssh-ed25519 AAAAkey sp")
    assert site.once == [("cat", False), ("tee", True)]


def test_doctors_test_job_is_submitted_once(monkeypatch):
    from local import doctor
    site = Recorder()
    chain = type("Chain", (), {"site": site, "layout": type("L", (), {"home": "/h"})()})()
    monkeypatch.setattr(doctor, "_read_probe", lambda *args: [])
    doctor._probe(chain, Options(login_node="login1"), None)
    assert ("sbatch", True) in site.once
    assert [name for name, once in site.once if once] == ["sbatch"]
