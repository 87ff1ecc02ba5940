"""One command (or file) on one login node's connection, and how it ended.

What a caller may do next depends on where a failure struck: before the
exec request went out (nothing ran: any node may be asked), or after it
(the command may have run there, or may still: an sshd frozen with the
request in its socket reads it when it resumes). Only a command that must
not run twice (sbatch) is held to the second case; local.remote decides.
"""

from __future__ import annotations

import io
import logging
import uuid
from pathlib import Path

import paramiko
from fabric import Connection
from fabric.runners import Remote
from invoke.exceptions import ThreadException, UnexpectedExit

log = logging.getLogger("slurm_persist.remote")

# How long a transport's thread is given to end, to tell a dead connection
# from a live one: paramiko closes the channels first and marks the
# transport inactive after a few steps in memory (transport.py, its run
# loop's end), while a live connection's thread never ends. Not measured: a
# bound on what a live connection pays, only after a failure (a channel
# closed without an exit status, a refused exec request, a failed stdin
# writer).
SETTLE = 0.5


class SentThenLost(Exception):
    """The connection died after the command's exec request went out. Not
    an OSError: Site's failover must not catch it unasked."""


class Lost(Exception):
    """The connection died once the command was asked for; stdout: what
    it printed before (sbatch's job id, maybe)."""

    def __init__(self, stdout: str):
        super().__init__("connection lost")
        self.stdout = stdout


class Runner(Remote):
    """Fabric's runner, telling a connection lost after the exec request
    was sent from a failure before it (opening the channel) or a refusal
    (sshd answered: its fork failed at the user's process limit, say)."""

    def send_start_message(self, command):
        try:
            super().send_start_message(command)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not gone(self.channel.get_transport()):
                raise  # the connection stands: sshd refused the request
            raise SentThenLost(str(exc) or type(exc).__name__) from exc

    def stop(self):
        # Closing the channel of a connection that just died may raise too
        # (EOFError from the socket); that must not hide SentThenLost.
        try:
            super().stop()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.debug("ssh=channel-close-failed error=%r", str(exc))


def gone(transport: paramiko.Transport | None) -> bool:
    """Whether the connection under a closed channel died."""
    if transport is None or not transport.is_active():
        return True
    transport.join(SETTLE)
    return not transport.is_alive()


def execute(conn: Connection, command: str, stdin: str | None, timeout: float):
    """Fabric's result of command (its exited -1: ended on a live
    connection without a status, as by a signal). Raises CommandTimedOut,
    and Lost once the request went out on a connection that then died."""
    try:
        out = conn.run(command, hide=True, warn=True, timeout=timeout,
                       in_stream=io.StringIO(stdin) if stdin is not None else False)
    except UnexpectedExit as exc:  # pragma: no cover - warn=True avoids it
        out = exc.result
    except SentThenLost:
        raise Lost("") from None
    except ThreadException:  # the writer of stdin, on a socket closed under it
        if gone(conn.transport):
            raise Lost("") from None
        raise
    if out.exited == -1 and gone(conn.transport):
        raise Lost(out.stdout)
    return out


def send_file(sftp: paramiko.SFTPClient, local: Path, remote: str, mode: int,
              timeout: float) -> None:
    """Upload beside the target, then rename: a job never reads half a file."""
    # Else a reply never comes from an sshd stopped mid-session (a deploy
    # waited past 120 s); socket.timeout moves Site to the next node.
    sftp.get_channel().settimeout(timeout)
    # Its own name: two `up`s may deploy the same file at once.
    partial = f"{remote}.partial-{uuid.uuid4().hex[:12]}"
    sftp.put(str(local), partial)
    sftp.chmod(partial, mode)
    sftp.posix_rename(partial, remote)
