#!/usr/bin/env bash
# Start a single-machine Ray head for artray jobs, reachable from this machine only.
#
#   bash cluster/start-local.sh                 # extra flags go to `ray start`, e.g. --num-gpus=1
#   source /tmp/artray-ray-6379/client.env      # the file it prints: points every client at this head
#   artray submit ingest --config jobs/configs/ingest.yaml --wait     # or: ray job submit …
#   bash cluster/stop-local.sh                  # stops this cluster only
#
# Ray's dashboard and job API run arbitrary code for whoever reaches them, so both are bound
# to 127.0.0.1 and Ray's token authentication is switched on. The token comes from
# $RAY_AUTH_TOKEN, the file at $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; if there is none,
# one is generated into ~/.ray/auth_token (mode 600, never printed); an existing one readable by
# others is made private (600). `artray submit`, `ray job submit` and the dashboard pick it up.
# Set ARTRAY_BIND=<private IP> only on a private network you control (Ray then listens on every
# interface, as it does by default, and other machines can join with `ray start --address`).
#
# The cluster keeps its sessions, logs and sockets in its own folder, ARTRAY_CLUSTER_DIR (default
# /tmp/artray-ray-<GCS port>), passed to Ray as --temp-dir: a plain `ray.init()` elsewhere on the
# machine does not join it by accident, and cluster/stop-local.sh stops exactly its processes
# (they share one process group, recorded in $ARTRAY_CLUSTER_DIR/cluster.pgid).
# The clients' settings are written to $ARTRAY_CLUSTER_DIR/client.env; `source` it.
#
# Ports: ARTRAY_RAY_PORT (GCS, 6379), ARTRAY_DASHBOARD_PORT (dashboard + job API, 8265).
set -euo pipefail
BIND=${ARTRAY_BIND:-127.0.0.1}
PORT=${ARTRAY_RAY_PORT:-6379}
DASHBOARD_PORT=${ARTRAY_DASHBOARD_PORT:-8265}
DIR=${ARTRAY_CLUSTER_DIR:-/tmp/artray-ray-$PORT}
RAY=${RAY:-ray}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
LOOPBACK=0
if [[ "$BIND" == 127.* || "$BIND" == localhost ]]; then
    # Ray turns --node-ip-address=127.0.0.1 into this machine's routable address and listens on all
    # interfaces, unless told the cluster is single-machine; then GCS, raylet, workers, agents and the
    # client server all listen on 127.0.0.1 only. Its clients need the same setting (client.env).
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    LOOPBACK=1
fi

if [[ -s "$DIR/cluster.pgid" ]] && kill -0 -- "-$(cat "$DIR/cluster.pgid")" 2>/dev/null; then
    echo "start-local: a cluster from $DIR is running already (process group $(cat "$DIR/cluster.pgid"));" \
         "stop it with: ARTRAY_CLUSTER_DIR=$DIR bash cluster/stop-local.sh" >&2
    exit 1
fi
if [[ "$BIND" != "127.0.0.1" && "$RAY_AUTH_MODE" != "token" ]]; then
    echo "start-local: refusing to bind $BIND without token auth (RAY_AUTH_MODE=$RAY_AUTH_MODE)" >&2
    exit 2
fi

TOKEN_FILE="$HOME/.ray/auth_token"
if [[ "$RAY_AUTH_MODE" == "token" && -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    if [[ ! -s "$TOKEN_FILE" ]]; then
        mkdir -p "$HOME/.ray"
        (umask 077 && "$RAY" get-auth-token --generate >/dev/null)
        echo "start-local: generated a Ray auth token in ~/.ray/auth_token" >&2
    fi
    if [[ "$(stat -c %a "$TOKEN_FILE")" != 600 ]]; then
        echo "start-local: ~/.ray/auth_token was mode $(stat -c %a "$TOKEN_FILE"); made it private (600)" >&2
    fi
    chmod 600 "$TOKEN_FILE"
    chmod 700 "$HOME/.ray"
fi

if (( ${#DIR} > 46 )); then
    # Ray puts sockets at $DIR/session_<date>_<pid>/sockets/plasma_store: 61 more characters, 107 at most.
    echo "start-local: ARTRAY_CLUSTER_DIR=$DIR is too long for Ray's socket paths (${#DIR} > 46 characters);" \
         "use a short folder such as /tmp/artray-ray-$PORT" >&2
    exit 2
fi
mkdir -p "$DIR"
chmod 700 "$DIR"
# The Python environment that runs the workers (the one `ray` belongs to): artray joins this cluster by
# default only from the same environment (artray.runtime.joinable_local_cluster).
RAY_PY=$(sed -n '1s/^#! *//p' "$(command -v "$RAY")" 2>/dev/null | cut -d' ' -f1 || true)
PY_PREFIX=$("${RAY_PY:-false}" -c 'import sys; print(sys.prefix)' 2>/dev/null || true)
rm -f "$DIR/cluster.pgid"
{
    echo "# Written by cluster/start-local.sh for the Ray cluster in $DIR."
    echo "# source it in every shell that talks to that cluster: artray, ray, serve, Python."
    echo "export RAY_ADDRESS=$BIND:$PORT                        # artray <stage>, ray.init(), serve run, ray status"
    echo "export RAY_API_SERVER_ADDRESS=http://$BIND:$DASHBOARD_PORT  # artray submit/jobs, ray job submit"
    echo "export RAY_DASHBOARD_ADDRESS=http://$BIND:$DASHBOARD_PORT   # serve deploy, serve status"
    echo "export RAY_AUTH_MODE=$RAY_AUTH_MODE                        # send the token (~/.ray/auth_token)"
    if [[ -n "$PY_PREFIX" ]]; then
        echo "# python-prefix: $PY_PREFIX"
    fi
    echo "# cwd: $PWD"  # the workers' folder and PYTHONPATH: a stage that joins passes its own only where they differ
    echo "# pythonpath: ${PYTHONPATH:-}"
    if [[ $LOOPBACK == 1 ]]; then
        echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # keep 127.0.0.1 (else Ray dials this machine's own address and hangs)"
    fi
} > "$DIR/client.env"
START=("$RAY" start --head --temp-dir="$DIR" --node-ip-address="$BIND" --dashboard-host="$BIND" --port="$PORT"
       --dashboard-port="$DASHBOARD_PORT" --disable-usage-stats "$@")
for arg in "$@"; do
    if [[ "$arg" == "--block" ]]; then
        # In the foreground: this process becomes the head; Ctrl-C (or SIGTERM) stops it.
        echo "start-local: clients: source $DIR/client.env" >&2
        exec "${START[@]}"
    fi
done
# setsid: Ray's processes (GCS, raylet, dashboard, agents, workers) all land in one new process
# group whose id is this `ray start`'s pid; stop-local.sh signals that group and nothing else.
setsid "${START[@]}" &
pgid=$!
if ! wait "$pgid"; then
    kill -TERM -- "-$pgid" 2>/dev/null || true
    echo "start-local: ray start failed (logs: $DIR/session_latest/logs)" >&2
    exit 1
fi
echo "$pgid" > "$DIR/cluster.pgid"
echo "start-local: Ray head up (process group $pgid, logs in $DIR/session_latest/logs)."
echo "start-local: point your shells at it with:  source $DIR/client.env"
echo "start-local: stop it with:  ARTRAY_CLUSTER_DIR=$DIR bash cluster/stop-local.sh"
