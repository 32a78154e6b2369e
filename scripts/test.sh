#!/usr/bin/env bash
# Runs the whole Switchboard test suite: installs what a fresh machine lacks (Debian
# packages for the real protocol peers, npm packages for the browser tests), makes sure a
# PostgreSQL server is reachable for the tests' throwaway databases (starting a private
# one when none is), then runs every Rust test and the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# Debian packages the tests' real peers come from.
APT_PACKAGES=(postgresql sip-tester baresip chromium chromium-driver dovecot-imapd haproxy kamailio kamailio-postgres-modules curl kannel)

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || true
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "==> missing packages (${need_apt[*]}); tests that need them will say so and skip" >&2
  fi
fi

# Browser test dependencies (playwright-core drives the system Chromium).
if [ -f tests/browser/package.json ] && command -v npm >/dev/null; then
  echo "==> installing browser test packages"
  (cd tests/browser && npm install --no-audit --no-fund --silent >/dev/null)
fi

# The SMPP peer of the SMS tests (the npm `smpp` package scripted as an SMSC).
if [ -f tests/sms/package.json ] && command -v npm >/dev/null; then
  echo "==> installing the SMS test peer"
  (cd tests/sms && npm install --no-audit --no-fund --silent >/dev/null)
fi

# The SMTP server the email tests read back (aiosmtpd writing a Maildir); Dovecot above.
if command -v python3 >/dev/null && ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "==> installing aiosmtpd (the email tests' SMTP server)"
  python3 -m pip install --quiet aiosmtpd >/dev/null 2>&1 || echo "==> could not install aiosmtpd; the email tests will skip" >&2
fi

# An S3-compatible server for the file-store tests (tests/cluster_files.rs runs
# `python3 -m moto.server` on loopback).
if command -v python3 >/dev/null && ! python3 -c 'import moto.server, flask_cors' 2>/dev/null; then
  echo "==> installing moto[server] (the S3-compatible server of the file-store tests)"
  python3 -m pip install --quiet 'moto[server]' >/dev/null 2>&1 || echo "==> could not install moto[server]; the S3 file-store test will skip" >&2
fi

# A PostgreSQL server for throwaway test databases.
: "${SWITCHBOARD_TEST_DATABASE_URL:=postgres://postgres@127.0.0.1:5432/postgres}"
if ! psql "$SWITCHBOARD_TEST_DATABASE_URL" -Atc 'select 1' >/dev/null 2>&1; then
  echo "==> no PostgreSQL at $SWITCHBOARD_TEST_DATABASE_URL; starting a private one"
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  PGDIR="$ROOT/target/test-pg"
  PGPORT=${SWITCHBOARD_TEST_PG_PORT:-54329}
  RUNAS=()
  if [ "$(id -u)" = 0 ]; then RUNAS=(runuser -u postgres --); fi
  if [ ! -f "$PGDIR/PG_VERSION" ]; then
    mkdir -p "$PGDIR"; [ "$(id -u)" = 0 ] && chown postgres "$PGDIR"
    "${RUNAS[@]}" "$PGBIN/initdb" -D "$PGDIR" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
  fi
  "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR" -l "$PGDIR/log" -w -o "-p $PGPORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off" start >/dev/null
  trap '"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR" -m fast stop >/dev/null 2>&1 || true' EXIT
  SWITCHBOARD_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
fi
export SWITCHBOARD_TEST_DATABASE_URL
echo "==> test database server: $SWITCHBOARD_TEST_DATABASE_URL"

echo "==> building"
cargo build --workspace --all-targets --quiet

echo "==> Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --test-threads "${TEST_THREADS:-4}"
else
  cargo test --workspace --no-fail-fast -- --test-threads "${TEST_THREADS:-4}"
fi

if [ -f tests/browser/package.json ]; then
  echo "==> browser tests (headless Chromium)"
  cargo build --quiet --bin switchboard
  (cd tests/browser && SWITCHBOARD_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/switchboard" node --test --test-concurrency=1 ./*.test.mjs)
fi

# The cluster fault drills (tests/cluster/run.sh): PostgreSQL primary + replica, three hub
# nodes behind HAProxy and Kamailio, chat visitors, SIPp callers, email and SMS, agents
# answering; kill -9 of a node and of the router leader, SIGSTOP/SIGCONT, PostgreSQL
# failover. Prints its table; a broken invariant fails the suite. Bounded (about 3 minutes;
# the runner stops it after 20, this after 25 with the build).
if command -v haproxy >/dev/null && command -v kamailio >/dev/null && command -v sipp >/dev/null; then
  echo "==> cluster fault drills"
  timeout 1500 tests/cluster/run.sh
else
  echo "==> cluster fault drills skipped: they need haproxy, kamailio and sipp (Debian: haproxy kamailio sip-tester)"
fi
