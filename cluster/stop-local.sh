#!/usr/bin/env bash
# Stop the Ray processes started by cluster/start-local.sh on this machine.
set -euo pipefail
exec ray stop "$@"
