#!/bin/bash
# Starts one host of the sandbox site. Usage: sandbox-entrypoint ROLE
# ROLE: jumphost | login | controller | compute
set -euo pipefail
role=$1

ssh-keygen -A >/dev/null

install_keys() {  # user, public key files...
    # Adds the sandbox's keys to what is there: a login node that restarts
    # must not drop keys the user added (reverse mode's, for one). /home is
    # shared and every login node starts at once: the temp name carries the
    # host name, since pids are alike across containers.
    local user=$1; shift
    local dir=/home/$user/.ssh tmp key
    install -d -m 700 -o "$user" -g "$user" "$dir"
    tmp=$dir/.authorized_keys.$(hostname)
    touch "$dir/authorized_keys"
    cp "$dir/authorized_keys" "$tmp"
    for key in "$@"; do
        grep -qxF "$(cat "$key")" "$tmp" || cat "$key" >>"$tmp"
    done
    chown "$user:$user" "$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$dir/authorized_keys"
}

make_homes() {
    # The shared /home starts empty (see compose.yml); install -d is happy
    # to find a directory another host has just made.
    local user
    for user in alice mallory; do
        install -d -m 755 -o "$user" -g "$user" "/home/$user"
    done
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
    make_homes
    install_keys alice /sandbox-keys/alice.pub
    install_keys mallory /sandbox-keys/mallory.pub
    start_munge
    exec /usr/sbin/sshd -D -e
    ;;
controller)
    make_homes
    start_munge
    exec slurmctld -D -i
    ;;
compute)
    echo "AllowUsers alice mallory" >>/etc/ssh/sshd_config.d/sandbox.conf
    make_homes
    start_munge
    /usr/sbin/sshd
    exec slurmd -D -N "$(hostname)"
    ;;
*)
    echo "unknown role: $role" >&2
    exit 2
    ;;
esac
