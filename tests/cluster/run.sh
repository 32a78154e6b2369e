#!/usr/bin/env bash
# The cluster drill suite, bounded in time: starts the loopback cluster
# (scripts/cluster.sh), runs tests/cluster/drills.py under chat load, tears it down.
#   tests/cluster/run.sh [drills.py options]      (needs postgresql haproxy kamailio curl)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CLUSTER_DIR="${CLUSTER_DIR:-$(mktemp -d /tmp/switchboard-drills.XXXXXX)}"
trap 'scripts/cluster.sh down --purge >/dev/null 2>&1 || true' EXIT
cargo build --quiet --bin switchboard
scripts/cluster.sh up
timeout 900 python3 tests/cluster/drills.py "$@"
