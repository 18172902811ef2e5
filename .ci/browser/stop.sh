#!/usr/bin/env bash
# Stops the chromedriver start.sh DIR started, by its pid, and the browsers
# it left (its process group: start.sh runs it with setsid).
# Safe to run more than once. Usage: stop.sh DIR
set -uo pipefail
dir=${1:?usage: stop.sh DIR}
pid=$(cat "$dir/pid" 2>/dev/null || true)
[[ -n "$pid" ]] || exit 0
# Its own session and process group (setsid): the group id is its pid.
kill -TERM -- "-$pid" 2>/dev/null || exit 0
for _ in $(seq 1 100); do
  kill -0 -- "-$pid" 2>/dev/null || { rm -f "$dir/pid"; exit 0; }
  sleep 0.1
done
kill -KILL -- "-$pid" 2>/dev/null || true
rm -f "$dir/pid"
