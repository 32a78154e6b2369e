#!/usr/bin/env bash
# The cluster drill suite, bounded in time: starts the loopback cluster
# (scripts/cluster.sh, through drills.py --up, which first starts Dovecot, aiosmtpd and the
# scripted SMSC when installed), runs tests/cluster/drills.py under chat, SIP, email and
# SMS load with agents answering (tests/cluster/agents.py), tears it down.
#   tests/cluster/run.sh [drills.py options]      (needs postgresql haproxy kamailio sipp curl)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CLUSTER_DIR="${CLUSTER_DIR:-$(mktemp -d /tmp/switchboard-drills.XXXXXX)}"
trap 'scripts/cluster.sh down --purge >/dev/null 2>&1 || true' EXIT
cargo build --quiet --bin switchboard
# The nodes (scripts/cluster.sh) and the restarts (drills.py) run the binary just built.
export SWITCHBOARD_BIN="${SWITCHBOARD_BIN:-${CARGO_TARGET_DIR:-$(pwd)/target}/debug/switchboard}"
timeout 1200 python3 tests/cluster/drills.py --up "$@"
