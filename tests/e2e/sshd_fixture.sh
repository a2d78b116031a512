#!/usr/bin/env bash
# A throwaway OpenSSH server on loopback, for the SSH end-to-end tests.
#
#   bash tests/e2e/sshd_fixture.sh install        # apt-get install openssh-server (CI, as root)
#   bash tests/e2e/sshd_fixture.sh start DIR PORT # keys, config, sshd; prints DIR/ssh_config
#   bash tests/e2e/sshd_fixture.sh stop DIR
#
# The server listens on 127.0.0.1 only and accepts one freshly made key. The client config it
# writes pins the server's host key in a known_hosts file with StrictHostKeyChecking=yes, so
# ssh checks host keys exactly as it would for a real remote machine.
set -euo pipefail

cmd=${1:?usage: sshd_fixture.sh install|start DIR PORT|stop DIR}
case "$cmd" in
install)
    if ! command -v /usr/sbin/sshd >/dev/null || ! command -v ssh >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client
    fi
    ;;
start)
    dir=${2:?DIR}; port=${3:?PORT}
    sshd=/usr/sbin/sshd
    [ -x "$sshd" ] || { echo "openssh-server is not installed: run '$0 install'" >&2; exit 2; }
    mkdir -p "$dir" /run/sshd
    chmod 700 "$dir"
    ssh-keygen -q -t ed25519 -N "" -f "$dir/host_key" -C hyperlex-test-host
    ssh-keygen -q -t ed25519 -N "" -f "$dir/id_ed25519" -C hyperlex-test-client
    cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
    chmod 600 "$dir/authorized_keys"
    user=$(id -un)
    cat >"$dir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers $user
UsePAM no
StrictModes no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
StreamLocalBindUnlink yes
LogLevel ERROR
CONF
    echo "[127.0.0.1]:$port $(cat "$dir/host_key.pub")" >"$dir/known_hosts"
    cat >"$dir/ssh_config" <<CONF
Host hyperlex-test
    HostName 127.0.0.1
    Port $port
    User $user
    IdentityFile $dir/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $dir/known_hosts
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 10
CONF
    "$sshd" -f "$dir/sshd_config" -E "$dir/sshd.log"
    for _ in $(seq 1 100); do
        [ -s "$dir/sshd.pid" ] && break
        sleep 0.05
    done
    [ -s "$dir/sshd.pid" ] || { echo "sshd did not start:" >&2; cat "$dir/sshd.log" >&2; exit 1; }
    echo "$dir/ssh_config"
    ;;
stop)
    dir=${2:?DIR}
    if [ -s "$dir/sshd.pid" ]; then
        kill "$(cat "$dir/sshd.pid")" 2>/dev/null || true
    fi
    ;;
*)
    echo "unknown command $cmd" >&2; exit 2 ;;
esac
