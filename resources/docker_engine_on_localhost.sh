#!/bin/bash
# Start task of sample4_docker_swarm.py: make the node's Docker engine answer on
# tcp://127.0.0.1:2375, where the sample's SSH tunnel reaches it (the equivalent of
# `ssh -L <port>:localhost:2375`).
#
# On Azure, systemd manages dockerd, which listens only on its unix socket. This adds a systemd
# socket on 127.0.0.1:2375 (loopback only: nothing outside the node reaches it) whose service
# relays each connection to /var/run/docker.sock with systemd-socket-proxyd, so dockerd is not
# restarted. Running it again changes nothing. Anything on the node can then use the engine,
# which is root-equivalent: give such a pool to one team.
#
# Where the node's engine is provided otherwise (DOCKER_HOST is set for tasks, as on the local
# stack, whose node SSH servers take `localhost` to mean the node), the engine is left as it is.
#
# It writes under /etc/systemd, so the start task runs it as an admin user.
set -euo pipefail
export LC_ALL=C.UTF-8

readonly SOCKET_UNIT=/etc/systemd/system/docker-on-localhost.socket
readonly SERVICE_UNIT=/etc/systemd/system/docker-on-localhost.service

# Write $2 to the file $1 unless it already holds exactly that; say whether it changed.
write_if_changed() {
    if [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; then
        return 1
    fi
    printf '%s\n' "$2" > "$1"
}

if [ -n "${DOCKER_HOST:-}" ]; then
    echo "The node's Docker engine is at ${DOCKER_HOST}: left as it is"
    docker version --format 'Docker engine {{.Server.Version}} answers'
    exit 0
fi

if [ ! -d /run/systemd/system ] || ! systemctl cat docker.service >/dev/null 2>&1; then
    echo "dockerd is not managed by systemd on this node: the engine is left as it is"
    exit 0
fi

proxy=""
for candidate in /usr/lib/systemd/systemd-socket-proxyd /lib/systemd/systemd-socket-proxyd; do
    if [ -x "$candidate" ]; then proxy="$candidate"; break; fi
done
if [ -z "$proxy" ]; then
    echo "error: systemd-socket-proxyd is not installed on this node" >&2
    exit 1
fi

changed=false
if write_if_changed "$SOCKET_UNIT" "[Unit]
Description=Docker engine API on 127.0.0.1:2375, for SSH tunnels

[Socket]
ListenStream=127.0.0.1:2375

[Install]
WantedBy=sockets.target"; then changed=true; fi
if write_if_changed "$SERVICE_UNIT" "[Unit]
Description=Relay 127.0.0.1:2375 to the Docker engine's unix socket
Requires=docker-on-localhost.socket docker.service
After=docker-on-localhost.socket docker.service

[Service]
ExecStart=$proxy /var/run/docker.sock"; then changed=true; fi

if [ "$changed" = true ]; then
    systemctl daemon-reload
    systemctl restart docker-on-localhost.socket
fi
systemctl enable --now docker-on-localhost.socket
systemctl start docker.service

# Bounded wait until the engine answers through the new socket.
for _ in $(seq 1 60); do
    if docker -H tcp://127.0.0.1:2375 version --format 'Docker engine {{.Server.Version}} answers on 127.0.0.1:2375' 2>/dev/null; then
        exit 0
    fi
    sleep 1
done
echo "error: the Docker engine does not answer on 127.0.0.1:2375 after 60 seconds" >&2
exit 1
