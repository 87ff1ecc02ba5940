"""`doctor`'s tiny job: what a compute node of this site allows.

Run by sbatch as ``python3 -c <this file> TOKEN_PATH LOGIN[,LOGIN...]``
(standard library only, nothing deployed needed). Prints ``PORT <n>`` as
soon as it listens on a port of the node (for the login node to try), then
one JSON line: the node, its descriptor limits, whether the token file
written on the login node is here (a shared home), whether sbatch works
from here (the agent submits its successor), whether each login node's
ssh port answers (reverse mode), and whether the login node came in.
"""

import json
import os
import resource
import socket
import subprocess
import sys

WAIT_FOR_LOGIN = 60.0


def main(token_path: str, logins: str) -> None:
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen(1)
    listener.settimeout(WAIT_FOR_LOGIN)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    report = {"node": socket.gethostname(), "nofile_soft": soft, "nofile_hard": hard,
              "shared_home": os.path.exists(token_path)}
    try:
        test = subprocess.run(["sbatch", "--test-only", "--wrap", "true"], capture_output=True,
                              text=True, timeout=60)
        report["sbatch"] = test.returncode == 0
        report["sbatch_said"] = (test.stderr or test.stdout).strip()[-200:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        report["sbatch"], report["sbatch_said"] = False, str(exc)
    reach = {}
    for login in filter(None, logins.split(",")):
        try:
            socket.create_connection((login, 22), 5).close()
            reach[login] = True
        except OSError:
            reach[login] = False
    report["ssh_to_login"] = reach
    try:
        conn, _ = listener.accept()
        conn.close()
        report["login_came_in"] = True
    except OSError:
        report["login_came_in"] = False
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
