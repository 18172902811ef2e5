#!/usr/bin/env bash
# Stops the cluster start.sh DIR started, by its pid. Usage: stop.sh DIR
set -uo pipefail
dir=${1:?usage: stop.sh DIR}
# A test may have restarted it: the live pid is in postmaster.pid.
pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || cat "$dir/pid" 2>/dev/null || true)
[[ -n "$pid" ]] || exit 0
kill -INT "$pid" 2>/dev/null || exit 0
for _ in $(seq 1 100); do
  kill -0 "$pid" 2>/dev/null || exit 0
  sleep 0.1
done
kill -KILL "$pid" 2>/dev/null || true
