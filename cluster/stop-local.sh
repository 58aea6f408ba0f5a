#!/usr/bin/env bash
# Stop the Ray head started by cluster/start-local.sh.
# Note: `ray stop` stops every Ray node this user runs on this machine (Ray has no per-cluster
# stop); a head started with `ray start --head --block` in a terminal stops with Ctrl-C instead.
set -euo pipefail
exec ray stop "$@"
