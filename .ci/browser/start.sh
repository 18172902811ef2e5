#!/usr/bin/env bash
# Starts chromedriver for the browser tests (tests/admin_browser.rs) on a
# free port, listening on the loopback interfaces only. Writes DIR/pid,
# DIR/chromedriver.log and DIR/env with RELAYMAIL_WEBDRIVER (the WebDriver
# URL). Installs Debian's chromium and chromium-driver when missing.
# Stop with stop.sh DIR. Usage: start.sh DIR
#
# No --allowed-ips: with it chromedriver listens on every interface (and
# filters peers by address); without it, it binds 127.0.0.1 and [::1] only
# and accepts local connections only.
set -euo pipefail
dir=${1:?usage: start.sh DIR}
mkdir -p "$dir"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if ((${#missing[@]})); then
  bash "$(dirname "$0")/../apt-install.sh" "${missing[@]}"
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
setsid chromedriver --port="$port" --log-path="$dir/chromedriver.log" \
  </dev/null >"$dir/chromedriver.out" 2>&1 &
echo $! >"$dir/pid"
pid=$(cat "$dir/pid")

# Ready when /status says so; bounded (10 s), and given up at once if it exits.
ready=0
for _ in $(seq 1 100); do
  if ! kill -0 "$pid" 2>/dev/null; then
    break
  fi
  if python3 - "$port" <<'PY' 2>/dev/null; then
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/status", timeout=2) as r:
    sys.exit(0 if json.load(r)["value"]["ready"] else 1)
PY
    ready=1
    break
  fi
  sleep 0.1
done
if ((ready == 0)); then
  echo "chromedriver did not become ready on 127.0.0.1:$port" >&2
  for f in chromedriver.out chromedriver.log; do
    [[ -s $dir/$f ]] && { echo "----- $dir/$f (last 40 lines)" >&2; tail -n 40 "$dir/$f" >&2; }
  done
  bash "$(dirname "$0")/stop.sh" "$dir" || true
  exit 1
fi

cat >"$dir/env" <<ENV
export RELAYMAIL_WEBDRIVER=http://127.0.0.1:$port
ENV
echo "chromedriver: pid $pid on 127.0.0.1:$port ($(chromedriver --version | cut -d' ' -f1-2), $(chromium --version 2>/dev/null | cut -d' ' -f1-2))"
