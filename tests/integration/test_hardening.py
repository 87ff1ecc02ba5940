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


def test_changed_host_key_is_refused(cluster, tmp_path):
    """login1 presenting another key is an error, not a reason to use login2."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "fake")],
                   check=True)
    fake = " ".join((tmp_path / "fake.pub").read_text().split()[:2])
    lines = cluster.known_hosts.read_text().splitlines()
    assert len({line.split(None, 1)[1] for line in lines}) == len(lines)  # keys differ per host
    forged = [f"login1 {fake}" if line.startswith("login1 ") else line for line in lines]
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(forged) + "\n")
    config = tmp_path / "ssh_config"
    config.write_text(cluster.ssh_config.read_text().replace(str(cluster.known_hosts), str(known)))
    args = site_args(cluster, "mitm")
    args[args.index("--ssh-config") + 1] = str(config)
    result = cli("status", *args)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("slurm-persist: error: login1:") and "host key" in last.lower(), last
