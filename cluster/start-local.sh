#!/usr/bin/env bash
# Start a single-machine Ray head for artray jobs, reachable from this machine only.
#
#   bash cluster/start-local.sh            # then: ray job submit --address http://127.0.0.1:8265 -- python jobs/…
#   bash cluster/stop-local.sh
#
# Ray's dashboard and job API run arbitrary code for whoever reaches them, so both are
# bound to 127.0.0.1 and Ray's token authentication is switched on (the token is written
# to ~/.ray/auth_token; `ray job submit` on this machine picks it up). Set
# ARTRAY_BIND=0.0.0.0 only on a private network you control.
set -euo pipefail
BIND=${ARTRAY_BIND:-127.0.0.1}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
exec ray start --head \
    --node-ip-address="$BIND" \
    --dashboard-host="$BIND" \
    --port="${ARTRAY_RAY_PORT:-6379}" \
    --dashboard-port="${ARTRAY_DASHBOARD_PORT:-8265}" \
    "$@"
