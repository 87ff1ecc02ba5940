"""What a laptop or a network in between can try."""

from __future__ import annotations

import socket
import subprocess

import pytest

from helpers import Up, cli, site_args

pytestmark = pytest.mark.cluster


def listening(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on port, from /proc/net."""
    found = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in open(f"/proc/net/{name}").read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.split(":")
            if state != "0A" or int(hexport, 16) != port:
                continue
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


def test_local_port_listens_on_loopback_only(cluster, tmp_path):
    up = Up(cluster, "loopback", tmp_path)
    try:
        up.wait_serving()
        addresses = listening(up.port)
        assert "127.0.0.1" in addresses
        assert addresses <= {"127.0.0.1", "::1"}, addresses
    finally:
        up.stop()


def own_known_hosts(cluster, tmp_path, name: str, checking: str = "yes"):
    """Site args whose ssh_config reads a known_hosts of the test's own (not
    yet written) and checks host keys as `checking` says."""
    known = tmp_path / "known_hosts"
    config = tmp_path / "ssh_config"
    config.write_text(cluster.ssh_config.read_text()
                      .replace(str(cluster.known_hosts), str(known))
                      .replace("StrictHostKeyChecking yes", f"StrictHostKeyChecking {checking}"))
    args = site_args(cluster, name)
    args[args.index("--ssh-config") + 1] = str(config)
    return known, args


def test_changed_host_key_is_refused(cluster, tmp_path):
    """login1 presenting another key is an error, not a reason to use login2."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "fake")],
                   check=True)
    fake = " ".join((tmp_path / "fake.pub").read_text().split()[:2])
    lines = cluster.known_hosts.read_text().splitlines()
    assert len({line.split(None, 1)[1] for line in lines}) == len(lines)  # keys differ per host
    forged = [f"login1 {fake}" if line.startswith("login1 ") else line for line in lines]
    known, args = own_known_hosts(cluster, tmp_path, "mitm")
    known.write_text("\n".join(forged) + "\n")
    result = cli("status", *args)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("slurm-persist: error: login1:") and "host key" in last.lower(), last


def shown_fingerprints(known_hosts_lines: list[str], tmp_path) -> dict[str, str]:
    """Host -> 'type SHA256:...' as OpenSSH's ssh-keygen prints it."""
    found = {}
    for number, line in enumerate(known_hosts_lines):
        host, keytype, blob = line.split()[:3]
        pub = tmp_path / f"k{number}.pub"
        pub.write_text(f"{keytype} {blob}\n")
        shown = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                               check=True).stdout.split()[1]
        found[host] = f"{keytype} {shown}"
    return found


def test_unknown_hosts_are_refused_with_the_fingerprint_to_check(cluster, tmp_path):
    known, args = own_known_hosts(cluster, tmp_path, "first-use")
    result = cli("status", *args)
    jump = cluster.known_hosts.read_text().splitlines()[0]
    expected = shown_fingerprints([jump], tmp_path)[jump.split()[0]]
    assert result.returncode != 0 and not known.exists()
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("slurm-persist: error:") and expected in last, last


def test_accept_new_records_first_keys_and_shows_their_fingerprints(cluster, tmp_path):
    known, args = own_known_hosts(cluster, tmp_path, "first-use", "accept-new")
    result = cli("status", *args)
    assert result.returncode == 0, result.stderr
    truth = cluster.known_hosts.read_text().splitlines()
    expected = shown_fingerprints(truth, tmp_path)
    recorded = known.read_text().splitlines()
    assert sorted(line.split()[0] for line in recorded) == sorted(
        [truth[0].split()[0], "login1"])
    assert set(recorded) <= {" ".join(line.split()[:3]) for line in truth}
    for line in recorded:
        host = line.split()[0]
        assert f"host={host} key='{expected[host]}' state=accepted-new" in result.stderr
    again = cli("status", *args)
    assert again.returncode == 0 and "accepted-new" not in again.stderr
    assert known.read_text().splitlines() == recorded
