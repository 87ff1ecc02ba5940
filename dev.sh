#!/usr/bin/env bash
# The entry points of the README, on a fresh Debian machine:
#   bash dev.sh up     bring up the sandbox cluster and serve hpc/ on localhost
#   bash dev.sh test   run the whole test suite (unit + docker cluster)
#   bash dev.sh bench  the benchmark (invoke bench; --short is what CI runs)
# Everything else (Docker, the venv, the images) is installed on first use.
# SANDBOX_RELEASE=trixie runs the sandbox on Debian trixie (SLURM 24.11)
# instead of bookworm (SLURM 22.05).
set -euo pipefail
cd "$(dirname "$0")"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_venv() {
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        echo "dev: installing python3-venv" >&2
        as_root apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q python3-venv python3-pip >&2
    fi
    [ -x .venv/bin/python ] || python3 -m venv .venv
    # Reinstall only when the dependency list changed.
    local stamp=.venv/.slurm-persist-installed want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "dev: installing slurm-persist and its test tools into .venv" >&2
        .venv/bin/python -m pip install -q --upgrade pip >&2
        .venv/bin/python -m pip install -q -e '.[test]' >&2
        echo "$want" >"$stamp"
    fi
}

# The benchmark's load tools (bench/tools.py): ab from apache2-utils, and wrk.
ensure_load_tools() {
    local missing=()
    command -v ab >/dev/null 2>&1 || missing+=(apache2-utils)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "dev: installing ${missing[*]}" >&2
        as_root apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${missing[@]}" >&2
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
up)
    ensure_venv
    bash docker/ensure-docker.sh >/dev/null
    exec .venv/bin/slurm-persist up "$@"
    ;;
test)
    ensure_venv
    ensure_load_tools
    bash docker/ensure-docker.sh >/dev/null
    exec .venv/bin/python -m pytest "$@"
    ;;
bench)
    # invoke bench: slurm-persist against a hand-made ssh -L (--short: what CI runs)
    ensure_venv
    ensure_load_tools
    bash docker/ensure-docker.sh >/dev/null
    exec .venv/bin/invoke bench "$@"
    ;;
lint)
    # ruff (style, imports, bugbear, asyncio; remote_agent as Python 3.8) and mypy.
    ensure_venv
    .venv/bin/ruff check .
    exec .venv/bin/mypy
    ;;
*)
    echo "usage: bash dev.sh up [options] | bash dev.sh test [pytest options] |" \
         "bash dev.sh bench [--short] | bash dev.sh lint" >&2
    exit 2
    ;;
esac
