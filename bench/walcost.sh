#!/bin/bash
# What a sale costs PostgreSQL through the service: WAL bytes, commits, WAL fsyncs, and the CPU of
# the service and of PostgreSQL per sale, over one wrk run of POST /sales (docs/SCALING.md, M2).
#
#   DATABASE_URL=postgresql://127.0.0.1:5432/footprint PGDATA=/var/lib/postgresql/15/main \
#       bench/walcost.sh BATCH [SECONDS] [CONNECTIONS]
#
# Starts `serve --workers 2` on a free port against DATABASE_URL (a migrated database with the
# benchmark's catalog: 200 stores, 1,000 products), runs wrk with bench/post.lua, stops the service
# (so that its backends flush their statistics) and prints the differences. PGDATA names the cluster's
# data directory: the CPU of its postmaster's processes is counted. The figures are the whole
# cluster's, so run it on a cluster nothing else writes to.
set -euo pipefail
BATCH=$1; DUR=${2:-10}; CONNS=${3:-64}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=$($PYTHON -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
OUT=$(mktemp -d)
q() { psql "${DATABASE_URL}" -Atc "$1"; }
# CPU ticks (user + system, own and reaped children's) of a process and its descendants.
ticks() {
  local t=0 p
  for p in $(pstree -p -T "$1" | grep -o '([0-9]*)' | tr -d '()'); do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
POSTMASTER=$(head -1 "$PGDATA/postmaster.pid")
HZ=$(getconf CLK_TCK)

SALESREPORT_LOG_FORMAT=json $PYTHON -m salesreport serve --host 127.0.0.1 --port "$PORT" --workers 2 \
  >"$OUT/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.2; done

SALES0=$(q "SELECT count(*) FROM sales")
LSN0=$(q "SELECT pg_current_wal_lsn()")
read -r SYNC0 FPI0 <<<"$(q "SELECT wal_sync, wal_fpi FROM pg_stat_wal" | tr '|' ' ')"
COMMIT0=$(q "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
T0=$(date +%s.%N); SVC0=$(ticks $SERVER); PG0=$(ticks "$POSTMASTER")

BENCH_BATCH=$BATCH BENCH_PREFIX="w$BATCH-$$-$RANDOM" BENCH_STORES=200 BENCH_PRODUCTS=1000 \
  wrk -t2 -c"$CONNS" -d"${DUR}s" --latency -s "$HERE/post.lua" "http://127.0.0.1:$PORT/sales" >"$OUT/wrk.txt"

T1=$(date +%s.%N); SVC1=$(ticks $SERVER); PG1=$(ticks "$POSTMASTER")
LSN1=$(q "SELECT pg_current_wal_lsn()")
kill -TERM $SERVER; wait $SERVER || true
sleep 1
SALES1=$(q "SELECT count(*) FROM sales")
read -r SYNC1 FPI1 <<<"$(q "SELECT wal_sync, wal_fpi FROM pg_stat_wal" | tr '|' ' ')"
COMMIT1=$(q "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
WAL=$(q "SELECT pg_wal_lsn_diff('$LSN1', '$LSN0')")

grep -E "Requests/sec|Non-2xx|Socket errors" "$OUT/wrk.txt" || true
awk -v n=$((SALES1 - SALES0)) -v wal="$WAL" -v syncs=$((SYNC1 - SYNC0)) -v fpi=$((FPI1 - FPI0)) \
    -v commits=$((COMMIT1 - COMMIT0)) -v svc=$((SVC1 - SVC0)) -v pg=$((PG1 - PG0)) -v hz="$HZ" \
    -v t0="$T0" -v t1="$T1" -v batch="$BATCH" -v conns="$CONNS" 'BEGIN {
  printf "POST of %d, %d connections: %d sales in %.1f s (%.0f/s)\n", batch, conns, n, t1 - t0, n / (t1 - t0)
  printf "WAL %.0f B per sale (%d full-page images); %.1f sales per commit, %.1f per WAL fsync\n", wal / n, fpi, n / commits, n / syncs
  printf "CPU per sale: service %.1f us, PostgreSQL %.1f us\n", svc / hz / n * 1e6, pg / hz / n * 1e6
}'
rm -rf "$OUT"
