"""The local reader of the agent's `show`: whatever an older agent or a
broken file prints, the answer is a ClusterError, which the forwarder waits
out, never a crash."""

import json

import pytest

from local.cluster import Chain
from local.config import Options
from local.remote import ClusterError, Result

RECORD = {"format": 1, "service": "hpc", "job_id": "12", "node": "node1", "host": "node1",
          "port": 4000, "socket": None, "login_node": None, "state": "serving",
          "started": 1.0, "ends_at": None, "secret": "00" * 16, "restarts": 0}
GOOD = {"chain": {"failed_jobs": 0, "stopped": False, "reason": "", "format": 1},
        "endpoints": [RECORD], "errors": {}}


class FakeSite:
    def __init__(self, stdout: str, returncode: int = 0):
        self.stdout, self.returncode = stdout, returncode

    def run(self, argv, **kwargs):
        if argv[0] == "printenv":
            return Result(0, "/home/a\n", "", "login1")
        return Result(self.returncode, self.stdout, "", "login1")


def snapshot(stdout: str, returncode: int = 0):
    return Chain(FakeSite(stdout, returncode), Options(login_node="login1")).snapshot()


def test_show_output_becomes_a_snapshot():
    snap = snapshot(json.dumps(GOOD))
    assert not snap.chain.stopped and list(snap.endpoints) == ["12"] and snap.errors == {}


def test_fields_a_newer_agent_adds_are_ignored():
    assert not snapshot(json.dumps(dict(GOOD, chain=dict(GOOD["chain"], extra=1)))).chain.stopped


def test_a_malformed_record_is_an_error_for_that_record_only():
    snap = snapshot(json.dumps(dict(GOOD, endpoints=["garbage", dict(RECORD, port="x")])))
    assert snap.endpoints == {} and len(snap.errors) == 2


@pytest.mark.parametrize("stdout", [
    "",
    "Traceback (most recent call last):",
    "[]",
    json.dumps({k: v for k, v in GOOD.items() if k != "errors"}),  # an older agent
    json.dumps(dict(GOOD, chain={"stopped": False})),
    json.dumps(dict(GOOD, chain=dict(GOOD["chain"], stopped="false"))),
    json.dumps(dict(GOOD, chain=[])),
    json.dumps(dict(GOOD, endpoints={"12": RECORD})),
    json.dumps(dict(GOOD, errors=["12"])),
])
def test_unexpected_show_output_is_a_cluster_error(stdout):
    with pytest.raises(ClusterError, match="unexpected output of the agent's show on login1"):
        snapshot(stdout)


def test_an_unsafe_answer_that_does_not_parse_is_a_cluster_error_too():
    with pytest.raises(ClusterError, match="unexpected output"):
        snapshot("{}", returncode=3)
