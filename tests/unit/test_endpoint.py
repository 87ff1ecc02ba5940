import json
import stat
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remote_agent import endpoint
from remote_agent.__main__ import address_of
from remote_agent.endpoint import Endpoint, EndpointError


def record(**changes) -> Endpoint:
    values = dict(service="hpc", job_id="42", node="node1", host="node1", port=40123,
                  socket=None, login_node=None, state="serving", started=1700000000.5,
                  ends_at=1700003600.0, secret="ab" * 16, restarts=0)
    values.update(changes)
    return Endpoint(**values)


def test_round_trip():
    original = record()
    assert endpoint.loads(original.dumps()) == original


def test_write_is_private_and_atomic(tmp_path):
    path = endpoint.write(tmp_path, record())
    assert path == tmp_path / "endpoints" / "42.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    endpoint.write(tmp_path, record(state="draining"))
    assert endpoint.read(path).state == "draining"
    assert [p.name for p in path.parent.iterdir()] == ["42.json"]  # no temp files left


@pytest.mark.parametrize("mode", [0o622, 0o666, 0o646])
def test_a_record_others_can_write_is_refused(tmp_path, mode):
    path = endpoint.write(tmp_path, record())
    path.chmod(mode)
    with pytest.raises(EndpointError, match=f"can be written by others \\(mode {mode:o}\\)"):
        endpoint.read(path)


def test_a_record_that_is_a_symlink_is_refused(tmp_path):
    real = endpoint.write(tmp_path, record())
    link = real.with_name("43.json")
    link.symlink_to(real)
    with pytest.raises(EndpointError, match="is a symbolic link"):
        endpoint.read(link)


def test_every_truncation_is_a_clean_error():
    text = record().dumps()
    for cut in range(len(text)):
        with pytest.raises(EndpointError):
            endpoint.loads(text[:cut])


@pytest.mark.parametrize("change, message", [
    ({"format": 2}, "format 2"),
    ({"state": "dancing"}, "unknown state"),
    ({"port": None}, "exactly one of port and socket"),
    ({"socket": "/tmp/s"}, "exactly one of port and socket"),
    ({"port": 70000}, "out of range"),
    ({"port": "80"}, "port has the wrong type"),
    ({"port": True}, "port has the wrong type"),
    ({"job_id": 42}, "job_id has the wrong type"),
])
def test_malformed_fields_are_named(change, message):
    data = json.loads(record().dumps())
    data.update(change)
    with pytest.raises(EndpointError, match=message):
        endpoint.loads(json.dumps(data))


def test_missing_field_is_named():
    data = json.loads(record().dumps())
    del data["secret"]
    with pytest.raises(EndpointError, match="missing secret"):
        endpoint.loads(json.dumps(data))


def test_unreadable_file(tmp_path):
    with pytest.raises(EndpointError, match="cannot read"):
        endpoint.read(tmp_path / "nope.json")


@given(st.text(max_size=400))
def test_fuzz_any_text_is_a_record_or_an_endpoint_error(text):
    try:
        endpoint.loads(text)
    except EndpointError:
        pass


@given(st.dictionaries(st.sampled_from(sorted(json.loads(record().dumps()))),
                       st.none() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=False)
                       | st.booleans()))
def test_fuzz_any_object_is_a_record_or_an_endpoint_error(data):
    try:
        endpoint.loads(json.dumps({**json.loads(record().dumps()), **data}))
    except EndpointError:
        pass


def test_the_forward_goes_to_the_address_the_login_node_resolved():
    e = record()
    assert e.remote == f"node1:{e.port}"
    assert replace(e, address="10.1.2.3").remote == f"10.1.2.3:{e.port}"
    assert replace(e, address="fd00::7").remote == f"[fd00::7]:{e.port}"
    assert replace(e, address="10.1.2.3") == e  # the same record, read from another node
    reverse = replace(e, port=None, socket="/run/user/1/gate.sock", address="10.1.2.3")
    assert reverse.remote == "/run/user/1/gate.sock"


def test_a_record_without_an_address_reads_as_unknown():
    data = json.loads(record().dumps())
    del data["address"]
    assert endpoint.loads(json.dumps(data)).address is None


def test_show_resolves_on_the_node_it_runs_on():
    assert address_of("localhost") in ("127.0.0.1", "::1")
    assert address_of("no-such-host.invalid") is None
