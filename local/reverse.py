"""Reverse mode's set-up on the cluster, done by deploy.

A job in reverse mode logs in to a login node itself (remote_agent.reverse).
It needs a key and the login nodes' host keys, and both are made here:

- the key is generated on the cluster, in ~/.slurm-persist/reverse (0700),
  so its private half never crosses the network, and authorized for
  forwarding only (``restrict,port-forwarding`` and a forced command that
  reads its input away): a copy of it gives no shell;
- the host keys are read from each login node's /etc/ssh over the
  connection the laptop has already verified against its known_hosts, and
  written to the known_hosts file the job checks strictly. The job never
  trusts a host key on first use.

The spec gets one [host, alias] pair per login node that answered: host is
the name the login node gives itself (what compute nodes resolve), alias
the laptop's name for it, which the job writes into its endpoint record.
"""

from __future__ import annotations

import logging

from remote_agent.spec import HOST_RE, Spec

from .cluster import Chain
from .remote import ClusterError, HostKeyRefused, Site, Unreachable

log = logging.getLogger("slurm_persist.reverse")

# The forced command waits for the job's ssh to close its stdin: a session
# makes sshd set TCP_NODELAY (see remote_agent.reverse.ssh_argv), and unlike
# sleep it cannot outlive the connection.
KEY_OPTIONS = 'restrict,port-forwarding,command="cat >/dev/null"'
HOST_KEYS = ["find", "/etc/ssh", "-maxdepth", "1", "-name", "ssh_host_*_key.pub",
             "-exec", "cat", "{}", "+"]


def prepare(chain: Chain, spec: Spec) -> list[list[str]]:
    site, lay = chain.site, chain.layout
    site.run(["mkdir", "-p", "-m", "700", lay.reverse_dir, f"{lay.home}/.ssh"])
    if site.run(["test", "-f", spec.reverse_key]).returncode != 0:
        # once: run again over a key it made, it waits at "Overwrite (y/n)?".
        _check(site.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                         "slurm-persist reverse mode", "-f", spec.reverse_key], once=True),
               "ssh-keygen")
        log.info("reverse=key-made path=%s", spec.reverse_key)
    public = _check(site.run(["cat", f"{spec.reverse_key}.pub"]), "reading the key").strip()
    authorize(site, f"{lay.home}/.ssh/authorized_keys", public)
    hops, known = [], []
    for alias in chain.options.login_nodes:
        found = _host_keys(site, alias)
        if found:
            host, lines = found
            hops.append([host, alias])
            known += lines
    if not hops:
        raise ClusterError("reverse mode: no login node showed its name and host keys")
    site.put_text("".join(known), spec.known_hosts, 0o600)
    log.info("reverse=ready login_nodes=%s", ",".join(f"{h}({a})" for h, a in hops))
    return hops


def authorize(site: Site, path: str, public: str) -> None:
    """Append the key, restricted, unless authorized_keys has it already."""
    current = site.run(["cat", path])
    text = current.stdout if current.returncode == 0 else ""
    body = public.split()[1]
    ours = [line for line in text.splitlines() if body in line.split()]
    if ours and all(line.startswith(KEY_OPTIONS + " ") for line in ours):
        return
    if ours:
        raise ClusterError(f"{path} lists the reverse-mode key with other options than "
                           f"{KEY_OPTIONS}: remove that line and deploy again")
    line = f"{KEY_OPTIONS} {public}\n"
    if text and not text.endswith("\n"):
        line = "\n" + line  # or it would run on from the file's last key
    # once: appended twice, the key would be listed twice.
    _check(site.run(["tee", "-a", path], stdin=line, once=True), f"adding the key to {path}")
    log.info("reverse=key-authorized file=%s", path)


def _host_keys(site: Site, alias: str) -> tuple[str, list[str]] | None:
    """(the node's own name, known_hosts lines), or None when it does not answer."""
    try:
        host = site.run_at(alias, ["hostname"]).stdout.strip()
        keys = site.run_at(alias, HOST_KEYS).stdout
    except HostKeyRefused:
        raise
    except Unreachable as exc:
        log.warning("login=%s reverse=left-out reason=%r (deploy again once it answers)",
                    alias, str(exc))
        return None
    if not HOST_RE.fullmatch(host):
        raise ClusterError(f"{alias} calls itself {host!r}, which is not a host name")
    lines = [f"{host} {' '.join(line.split()[:2])}\n" for line in keys.splitlines()
             if line.strip()]
    if not lines:
        raise ClusterError(f"{alias}: no host keys readable in /etc/ssh")
    return host, lines


def _check(result, what: str) -> str:
    if result.returncode != 0:
        raise ClusterError(f"{what} failed on {result.host}: {result.stderr.strip()[:300]}")
    return result.stdout
