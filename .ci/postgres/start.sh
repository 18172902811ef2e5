#!/usr/bin/env bash
# Starts a private PostgreSQL cluster for the PgOutbox tests: initdb in DIR,
# listening on 127.0.0.1 only, on a free port, owned by the `postgres` user
# (initdb refuses root). Writes DIR/env with RELAYMAIL_PG_URL, RELAYMAIL_PG_CTL
# and RELAYMAIL_PG_DATA (for tests that restart it), and DIR/pid.
# Installs Debian's postgresql when it is missing. fsync is off (a test
# cluster) unless RELAYMAIL_PG_FSYNC=on (for benchmarks). Usage: start.sh DIR
set -euo pipefail
dir=${1:?usage: start.sh DIR}

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
  bash "$(dirname "$0")/../apt-install.sh" postgresql
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

user=postgres
id "$user" >/dev/null 2>&1 || useradd --system --no-create-home "$user"
as_user() { runuser -u "$user" -- "$@"; }

data="$dir/data"
mkdir -p "$data"
chown -R "$user" "$dir"
chmod 700 "$data"
as_user "$bindir/initdb" -D "$data" -U relaymail --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = ${RELAYMAIL_PG_FSYNC:-off}
max_connections = 100
CONF
as_user "$bindir/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start >/dev/null
head -n 1 "$data/postmaster.pid" >"$dir/pid"
as_user "$bindir/createdb" -h 127.0.0.1 -p "$port" -U relaymail relaymail_test

cat >"$dir/env" <<ENV
export RELAYMAIL_PG_URL=postgres://relaymail@127.0.0.1:$port/relaymail_test
export RELAYMAIL_PG_CTL="runuser -u $user -- $bindir/pg_ctl"
export RELAYMAIL_PG_DATA=$data
ENV
echo "postgres: pid $(cat "$dir/pid") on 127.0.0.1:$port"
