#!/bin/bash
# Starts one host of the sandbox site. Usage: sandbox-entrypoint ROLE
# ROLE: jumphost | login | controller | compute
set -euo pipefail
role=$1

ssh-keygen -A >/dev/null

install_keys() {  # user, public key files...
    local user=$1; shift
    local dir=/home/$user/.ssh
    install -d -m 700 -o "$user" -g "$user" "$dir"
    cat "$@" >"$dir/.authorized_keys.$$"
    chown "$user:$user" "$dir/.authorized_keys.$$"
    chmod 600 "$dir/.authorized_keys.$$"
    mv -f "$dir/.authorized_keys.$$" "$dir/authorized_keys"
}

start_munge() {
    runuser -u munge -- munged --force
}

case $role in
jumphost)
    echo "AllowUsers service" >>/etc/ssh/sshd_config.d/sandbox.conf
    install_keys service /sandbox-keys/*.pub
    exec /usr/sbin/sshd -D -e
    ;;
login)
    echo "AllowUsers alice mallory" >>/etc/ssh/sshd_config.d/sandbox.conf
    install_keys alice /sandbox-keys/alice.pub
    install_keys mallory /sandbox-keys/mallory.pub
    start_munge
    exec /usr/sbin/sshd -D -e
    ;;
controller)
    start_munge
    exec slurmctld -D -i
    ;;
compute)
    echo "AllowUsers alice mallory" >>/etc/ssh/sshd_config.d/sandbox.conf
    start_munge
    /usr/sbin/sshd
    exec slurmd -D -N "$(hostname)"
    ;;
*)
    echo "unknown role: $role" >&2
    exit 2
    ;;
esac
