# shellcheck shell=bash
# A PostgreSQL for a bench, on 127.0.0.1, started as tests/api/support_postgres.rs
# starts one: as the `postgres` user when this runs as root, trust on 127.0.0.1 only,
# fsync off as the tests run it, in a temporary directory. Sourced by
# bench/webhooks, bench/webhooks-alternating and bench/admission-instructions:
#
#   pg_start LOG PIN...   start it (PIN: a command prefix, e.g. taskset -c 0);
#                         sets PG_PORT, PG_DIR, PG_BIN, PG_PID
#   pg_createdb NAME      a database; prints drisc's settings for it, one per line
#   pg_cpu                clock ticks used so far by the postmaster and its
#                         children (0 without PostgreSQL)
#   pg_stop               stop it and remove its directory
PG_PORT=""; PG_DIR=""; PG_BIN=""; PG_PID=""
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_start() {
  local log=$1; shift
  PG_BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")
  [ -x "$PG_BIN/initdb" ] || { echo "no PostgreSQL server binaries (scripts/test-deps)" >&2; exit 1; }
  PG_DIR=$(mktemp -d /tmp/drisc-bench-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres "$PG_DIR"
  PG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$log" 2>&1
  as_pg "$@" "$PG_BIN/pg_ctl" start -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 \
    -o "-h 127.0.0.1 -p $PG_PORT -k $PG_DIR -F -c full_page_writes=off" >/dev/null
  PG_PID=$(head -1 "$PG_DIR/data/postmaster.pid")
}
pg_createdb() {
  as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$1"
  echo DRISC__STORAGE__SETTINGS=postgres
  echo "DRISC__STORAGE__POSTGRES_URL=postgres://postgres@127.0.0.1:$PG_PORT/$1"
}
pg_cpu() {
  [ -n "$PG_PORT" ] || { echo 0; return; }
  { echo "$PG_PID"; pgrep -P "$PG_PID"; } | while read -r p; do
    awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true
  done | awk '{s += $1} END {print s + 0}'
}
pg_stop() {
  [ -n "$PG_PORT" ] || return 0
  as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DIR/data" -m immediate -w >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  PG_PORT=""
}
