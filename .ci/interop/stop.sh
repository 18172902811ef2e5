#!/usr/bin/env bash
# Usage: stop.sh DIR
# Stops what start.sh DIR started (by pid) and waits until it is gone.
# Safe to run more than once, and on a DIR whose start failed half way.
set -uo pipefail

if (($# != 1)); then
  echo "usage: $0 DIR" >&2
  exit 2
fi
[[ -d $1 ]] || exit 0
DIR=$(cd "$1" && pwd)
conf=$DIR/postfix-conf

# A zombie (exited, not yet reaped by init) counts as gone.
alive() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# wait_gone SECONDS PID...: true once none of the pids is alive.
wait_gone() {
  local tries=$(($1 * 10)) pid any
  shift
  while ((tries-- > 0)); do
    any=0
    for pid in "$@"; do alive "$pid" && any=1; done
    ((any == 0)) && return 0
    sleep 0.1
  done
  return 1
}

# Processes started by this DIR's postfix master carry its config directory
# in their environment (MAIL_CONFIG); found by pid, never by name.
postfix_children() {
  local f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}
    pid=${pid%/environ}
    if { tr "\\0" "\\n" <"$f"; } 2>/dev/null | grep -qxF "MAIL_CONFIG=$conf"; then
      echo "$pid"
    fi
  done
}

status=0

# --- aiosmtpd ----------------------------------------------------------------
if [[ -s $DIR/aiosmtpd.pid ]]; then
  pid=$(<"$DIR/aiosmtpd.pid")
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    if ! wait_gone 10 "$pid"; then
      echo "interop: aiosmtpd ($pid) ignored SIGTERM; killing" >&2
      kill -KILL "$pid" 2>/dev/null
      wait_gone 5 "$pid" || status=1
    fi
  fi
  rm -f "$DIR/aiosmtpd.pid"
fi

# --- postfix -----------------------------------------------------------------
master=
[[ -s $DIR/postfix.pid ]] && master=$(tr -d ' \n' <"$DIR/postfix.pid")
if [[ -z $master && -s $DIR/postfix-queue/pid/master.pid ]]; then
  master=$(tr -d ' \n' <"$DIR/postfix-queue/pid/master.pid")
fi
if [[ -n $master ]] && alive "$master"; then
  if [[ -f $conf/main.cf ]]; then
    postfix -c "$conf" stop >/dev/null 2>&1 || kill -TERM "$master" 2>/dev/null
  else
    kill -TERM "$master" 2>/dev/null
  fi
  if ! wait_gone 15 "$master"; then
    echo "interop: postfix master ($master) did not stop; killing" >&2
    kill -KILL "$master" 2>/dev/null
    wait_gone 5 "$master" || status=1
  fi
fi
if [[ -d $conf ]]; then
  # The master tells its children to go; make sure they did.
  mapfile -t kids < <(postfix_children)
  if ((${#kids[@]})) && ! wait_gone 10 "${kids[@]}"; then
    mapfile -t kids < <(postfix_children)
    ((${#kids[@]})) && kill -KILL "${kids[@]}" 2>/dev/null
    wait_gone 5 "${kids[@]}" || status=1
  fi
fi
rm -f "$DIR/postfix.pid"

if ((status != 0)); then
  echo "interop: some processes would not stop" >&2
fi
exit "$status"
