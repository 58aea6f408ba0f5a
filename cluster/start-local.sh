#!/usr/bin/env bash
# Start a single-machine Ray head for artray jobs, reachable from this machine only.
#
#   bash cluster/start-local.sh                 # extra flags go to `ray start`, e.g. --num-gpus=1
#   artray submit ingest --config jobs/configs/ingest.yaml --wait     # or: ray job submit …
#   bash cluster/stop-local.sh
#
# Ray's dashboard and job API run arbitrary code for whoever reaches them, so both are bound
# to 127.0.0.1 and Ray's token authentication is switched on. The token comes from
# $RAY_AUTH_TOKEN, the file at $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; if there is none,
# one is generated into ~/.ray/auth_token (mode 600, never printed). `artray submit`,
# `ray job submit` and the dashboard on this machine pick it up from there.
# Set ARTRAY_BIND=<private IP> only on a private network you control (Ray then listens on every
# interface, as it does by default, and other machines can join with `ray start --address`).
#
# Ports: ARTRAY_RAY_PORT (GCS, 6379), ARTRAY_DASHBOARD_PORT (dashboard + job API, 8265).
set -euo pipefail
BIND=${ARTRAY_BIND:-127.0.0.1}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ "$BIND" == 127.* || "$BIND" == localhost ]]; then
    # Ray turns --node-ip-address=127.0.0.1 into this machine's routable address and listens on all
    # interfaces, unless told the cluster is single-machine; then GCS, raylet, workers, agents and the
    # client server all listen on 127.0.0.1 only.
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
fi

if [[ "$RAY_AUTH_MODE" == "token" && -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" \
      && ! -s "$HOME/.ray/auth_token" ]]; then
    (umask 077 && ray get-auth-token --generate >/dev/null)
    chmod 600 "$HOME/.ray/auth_token"
    echo "start-local: generated a Ray auth token in ~/.ray/auth_token" >&2
fi
if [[ "$BIND" != "127.0.0.1" && "$RAY_AUTH_MODE" != "token" ]]; then
    echo "start-local: refusing to bind $BIND without token auth (RAY_AUTH_MODE=$RAY_AUTH_MODE)" >&2
    exit 2
fi

exec ray start --head \
    --node-ip-address="$BIND" \
    --dashboard-host="$BIND" \
    --port="${ARTRAY_RAY_PORT:-6379}" \
    --dashboard-port="${ARTRAY_DASHBOARD_PORT:-8265}" \
    --disable-usage-stats \
    "$@"
