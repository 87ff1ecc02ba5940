"""known_hosts as the control plane reads and writes it, against OpenSSH's
own ssh-keygen."""

import subprocess

import paramiko
import pytest

from local import host_keys


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paramiko.Ed25519Key.from_private_key_file(str(path)), path.with_suffix(".pub")


def test_fingerprint_is_the_one_ssh_keygen_shows(key):
    pkey, pub = key
    shown = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                           check=True).stdout.split()[1]
    assert host_keys.fingerprint(pkey) == f"ssh-ed25519 {shown}"


def test_a_line_paramiko_cannot_read_costs_that_line_only(key, tmp_path):
    pkey, _ = key
    line = f"{pkey.get_name()} {pkey.get_base64()}"
    known = tmp_path / "known_hosts"
    known.write_text(f"@cert-authority *.example.org {line}\nnot a key line\n# comment\n"
                     f"login1,login2 {line}\ngarbage ssh-ed25519 !!!\n[jump]:2222 {line}\n")
    keys = paramiko.HostKeys()
    host_keys.load_known_hosts(keys, known)
    assert sorted(keys.keys()) == ["[jump]:2222", "login1", "login2"]
    assert keys.check("login2", pkey)


def test_accept_new_records_the_key_privately_and_says_so(key, tmp_path, caplog):
    pkey, _ = key
    known = tmp_path / "new" / "known_hosts"
    client = paramiko.SSHClient()
    host_keys.AcceptNew(known).missing_host_key(client, "[127.0.0.1]:2222", pkey)
    assert known.read_text() == f"[127.0.0.1]:2222 {pkey.get_name()} {pkey.get_base64()}\n"
    assert known.stat().st_mode & 0o777 == 0o600
    assert host_keys.fingerprint(pkey) in caplog.text and "state=accepted-new" in caplog.text
    keys = paramiko.HostKeys()
    host_keys.load_known_hosts(keys, known)
    assert keys.check("[127.0.0.1]:2222", pkey)


def test_unknown_key_is_refused_with_its_fingerprint(key):
    pkey, _ = key
    with pytest.raises(host_keys.HostKeyUnknown, match="SHA256:"):
        host_keys.RejectUnknown().missing_host_key(paramiko.SSHClient(), "login1", pkey)
