#!/usr/bin/env bash
# Make a Docker engine and the sandbox's base image available on a Debian host.
# Idempotent: every step checks first, so a second run costs a few seconds.
# Prints the base image name to use on its last line of stdout.
set -euo pipefail

# SANDBOX_RELEASE picks the Debian release, and with it SLURM and Python:
# bookworm (22.05, 3.11) or trixie (24.11, 3.13).
RELEASE=${SANDBOX_RELEASE:-bookworm}
BASE_IMAGE=${BASE_IMAGE:-debian:$RELEASE-slim}
LOCAL_BASE=slurm-persist/debian:$RELEASE
log() { printf 'sandbox: %s\n' "$*" >&2; }
case $RELEASE in
bookworm | trixie) ;;
*) log "SANDBOX_RELEASE must be bookworm or trixie, not '$RELEASE'"; exit 2 ;;
esac

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v ssh >/dev/null || missing+=(openssh-client)
    command -v ssh-keygen >/dev/null || missing+=(openssh-client)
    [ ${#missing[@]} -eq 0 ] && return
    log "installing ${missing[*]}"
    as_root apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${missing[@]}" >&2
}

start_dockerd() {
    docker info >/dev/null 2>&1 && return
    log "no Docker engine answers; starting dockerd (log: /var/log/slurm-persist-dockerd.log)"
    # A clean environment in its own session: dockerd outlives whoever
    # started it, and runc keeps files under XDG_RUNTIME_DIR, so a caller's
    # temporary one (a test run's) would break every later `docker exec`.
    as_root env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        setsid sh -c 'nohup dockerd >/var/log/slurm-persist-dockerd.log 2>&1 &' </dev/null
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return
        sleep 1
    done
    log "dockerd did not answer within 60 s; see /var/log/slurm-persist-dockerd.log"
    exit 1
}

# The base image comes from a registry when one answers, else from Debian's
# own packages: debootstrap needs only the apt mirror the host already uses.
ensure_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then echo "$BASE_IMAGE"; return; fi
    if docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then echo "$LOCAL_BASE"; return; fi
    if timeout 60 docker pull "$BASE_IMAGE" >/dev/null 2>&1; then echo "$BASE_IMAGE"; return; fi
    log "cannot pull $BASE_IMAGE; building $LOCAL_BASE with debootstrap (about a minute)"
    local mirror root
    mirror=$(apt_mirror)
    root=$(mktemp -d /tmp/slurm-persist-rootfs.XXXXXX)
    trap 'as_root rm -rf "$root"' RETURN
    as_root debootstrap --variant=minbase "$RELEASE" "$root" "$mirror" >"$root.log" 2>&1 \
        || { log "debootstrap failed; see $root.log"; exit 1; }
    as_root tar -C "$root" -c . | docker import - "$LOCAL_BASE" >/dev/null
    echo "$LOCAL_BASE"
}

apt_mirror() {
    local uri
    uri=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$uri" ] || uri=$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

install_packages
start_dockerd
ensure_base_image
