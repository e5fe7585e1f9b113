#!/bin/bash
# The log book's cost: `emulator up` (release) with the default log book
# (`emulator logs`, the console's trace view) against `--log-lines 0`, each
# loaded by the load bench at 16 clients for 15 s, alternating A B A B.
# Needs the local PostgreSQL and Redis, and nothing else running.
#   bash tests/benches/logbook.sh [rounds]
set -u
cd "$(dirname "$0")/../.."
cargo build --quiet --release -p shop --bin emulator || exit 1
cargo bench --quiet -p tests --bench load --no-run || exit 1
for round in $(seq 1 "${1:-2}"); do
  for variant in book none; do
    db="bb_$(date +%s)_$variant"
    createdb -h 127.0.0.1 -U postgres "$db" || exit 1
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    dir=$(mktemp -d)
    printf '{"Parameters": {"STREAM_NAMESPACE": "%s"}}\n' "$db" >"$dir/env.json"
    extra=()
    [ "$variant" = none ] && extra=(--log-lines 0)
    DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" target/release/emulator up --port "$port" \
      --state-dir "$dir/state" --env-vars "$dir/env.json" \
      --parameter-overrides DefaultCreditLimitCents=100000000000 ApiThrottlingBurstLimit=100000 \
      ApiThrottlingRateLimit=100000 "${extra[@]}" >"$dir/up.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do grep -q '^Ready in' "$dir/up.log" && break; sleep 0.2; done
    echo "== round $round, log book: $variant"
    cargo bench --quiet -p tests --bench load -- --url "http://127.0.0.1:$port" \
      --database-url "postgres://postgres@127.0.0.1:5432/$db" --namespace "$db" \
      --state-dir "$dir/state" --levels 16 --seconds 15 --raw-seconds 0 --drain-seconds 30 \
      2>/dev/null | grep -E 'clients: POST|[0-9] accepted:'
    kill -INT "$pid"
    wait "$pid"
    redis-cli --scan --pattern "$db:*" | xargs -r redis-cli del >/dev/null
    dropdb -h 127.0.0.1 -U postgres --force "$db"
    rm -rf "$dir"
  done
done
