# shellcheck shell=bash
# Reading a server's port from its log, for the bench scripts that start a drisc
# or a drisc-baseline on port 0. Sourced:
#
#   server_port LOG [PID] [TRIES]
#       prints the port the server logging to LOG listens on, once the log shows
#       it: drisc's `ws://127.0.0.1:PORT/ws` line, or the baseline's `listening on
#       127.0.0.1:PORT`. Looks TRIES times (default 100), 0.1 s apart; stops early
#       if PID is given and that process has ended. Prints nothing if the port
#       never came: the caller says which server did not start.
server_port() {
  local log=$1 pid=${2:-} tries=${3:-100} port="" _
  for _ in $(seq "$tries"); do
    # The log may not exist yet: the server's shell creates it.
    port=$(grep -ohE '(ws://127\.0\.0\.1:[0-9]+/ws|^listening on 127\.0\.0\.1:[0-9]+$)' "$log" 2>/dev/null \
      | head -1 | grep -oE ':[0-9]+' | tr -d : || true)
    [ -n "$port" ] && break
    [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$port"
}
