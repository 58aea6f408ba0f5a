#!/usr/bin/env bash
# Stop the Ray cluster that cluster/start-local.sh started, and only that one.
#
#   bash cluster/stop-local.sh                              # the cluster of /tmp/artray-ray-6379
#   ARTRAY_CLUSTER_DIR=/tmp/artray-ray-7000 bash cluster/stop-local.sh
#
# start-local.sh runs every process of its cluster in one process group and records the group id
# in $ARTRAY_CLUSTER_DIR/cluster.pgid. This sends SIGTERM to that group, waits up to
# ARTRAY_STOP_GRACE_S (default 10 s) for it to exit, then SIGKILLs what is left. Other Ray
# clusters of this user (a test's ray.init(), another start-local.sh) keep running; `ray stop`,
# by contrast, stops every Ray process of the user on the machine.
set -euo pipefail
PORT=${ARTRAY_RAY_PORT:-6379}
DIR=${ARTRAY_CLUSTER_DIR:-/tmp/artray-ray-$PORT}
GRACE=${ARTRAY_STOP_GRACE_S:-10}
PGID_FILE="$DIR/cluster.pgid"

if [[ ! -s "$PGID_FILE" ]]; then
    echo "stop-local: no cluster recorded in $DIR (nothing started there, or it was stopped);" \
         "set ARTRAY_CLUSTER_DIR to the folder start-local.sh printed" >&2
    exit 1
fi
pgid=$(cat "$PGID_FILE")
if ! kill -0 -- "-$pgid" 2>/dev/null; then
    echo "stop-local: the cluster of $DIR (process group $pgid) is not running"
    rm -f "$PGID_FILE"
    exit 0
fi
kill -TERM -- "-$pgid" 2>/dev/null || true
for _ in $(seq 1 $((GRACE * 5))); do
    kill -0 -- "-$pgid" 2>/dev/null || break
    sleep 0.2
done
if kill -0 -- "-$pgid" 2>/dev/null; then
    kill -KILL -- "-$pgid" 2>/dev/null || true
    echo "stop-local: processes still up after ${GRACE}s were killed"
fi
rm -f "$PGID_FILE"
echo "stop-local: stopped the Ray cluster of $DIR (process group $pgid)"
