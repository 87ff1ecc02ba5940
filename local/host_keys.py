"""Host keys for the control plane, as OpenSSH treats them.

Keys are checked against the user's known_hosts (or the one the ssh_config
names); an unknown host is refused, unless the ssh_config says
``StrictHostKeyChecking accept-new`` for it: then, as OpenSSH does, its key
is recorded and its fingerprint shown. A changed key is always refused
(paramiko raises BadHostKeyException; local.remote stops on it).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

import paramiko

log = logging.getLogger("slurm_persist.host_keys")


class HostKeyUnknown(paramiko.SSHException):
    pass


class RejectUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key):
        raise HostKeyUnknown(
            f"host key of {hostname} is not in known_hosts ({fingerprint(key)}); connect once "
            "with ssh to check and accept it (or set StrictHostKeyChecking accept-new for it "
            "in your ssh config)")


class AcceptNew(paramiko.MissingHostKeyPolicy):
    """Trust on first use, recorded where OpenSSH records it (the first
    UserKnownHostsFile), so both planes know the key from then on."""

    def __init__(self, path: Path):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        log.warning("host=%s key=%r state=accepted-new known_hosts=%s", hostname,
                    fingerprint(key), str(self.path))
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as known:
            known.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


def fingerprint(key: paramiko.PKey) -> str:
    """As ssh-keygen -l and OpenSSH's prompts show it, for comparing by eye."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def load_known_hosts(keys: paramiko.HostKeys, path: Path) -> None:
    """Line by line: paramiko's own loader gives up on the first line it
    cannot read (a @cert-authority one, say) and drops the rest."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(("#", "@")):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
        except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError):
            entry = None
        if entry is None:
            log.debug("known_hosts=%s line=%d state=skipped", path, number)
            continue
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)


def paths(value, default: str) -> list[Path]:
    """An ssh_config list of files (a string or paramiko's list), or OpenSSH's default."""
    names = value.split() if isinstance(value, str) else value or [default]
    return [Path(name).expanduser() for name in names]


def check_host_keys(client: paramiko.SSHClient, ssh_config) -> None:
    """Load the known_hosts files ssh_config names (OpenSSH's defaults
    otherwise) into client, and set its policy for an unknown host."""
    files = paths(ssh_config.get("userknownhostsfile"), "~/.ssh/known_hosts")
    site_wide = paths(ssh_config.get("globalknownhostsfile"), "/etc/ssh/ssh_known_hosts")
    for path in site_wide + files:
        load_known_hosts(client.get_host_keys(), path)
    checking = str(ssh_config.get("stricthostkeychecking", "ask")).lower()
    # "no" too: OpenSSH then also records a new key; a changed one is refused here regardless.
    client.set_missing_host_key_policy(
        AcceptNew(files[0]) if checking in ("accept-new", "no", "off") else RejectUnknown())
