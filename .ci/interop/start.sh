#!/usr/bin/env bash
# Usage: start.sh DIR
# Starts the interop SMTP servers on 127.0.0.1 (Postfix from its own config
# under DIR, aiosmtpd), waits until each one greets, and writes DIR/env.
# Run setup.sh first. Stop with stop.sh DIR.
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 DIR" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
PYTHON=$(command -v "$PYTHON")
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
if [[ $DIR =~ [[:space:]] ]]; then
  echo "interop: DIR must not contain whitespace (it goes into main.cf): $DIR" >&2
  exit 2
fi

POSTFIX_PORT=2525
POSTFIX_SMTPS_PORT=2465
AIOSMTPD_STARTTLS_PORT=3587
AIOSMTPD_SMTPS_PORT=3465
AIOSMTPD_PLAIN_PORT=3525
AIOSMTPD_USER=relaymail
AIOSMTPD_PASSWORD=interop-secret
PORTS=("$POSTFIX_PORT" "$POSTFIX_SMTPS_PORT" "$AIOSMTPD_STARTTLS_PORT" "$AIOSMTPD_SMTPS_PORT" "$AIOSMTPD_PLAIN_PORT")

# A previous run left in DIR is stopped first, so start.sh can be repeated.
if compgen -G "$DIR/*.pid" >/dev/null; then
  bash "$here/stop.sh" "$DIR"
fi

busy=0
for port in "${PORTS[@]}"; do
  if ss -Hltn "sport = :$port" | grep -q .; then
    echo "interop: port $port is already in use:" >&2
    ss -ltnp "sport = :$port" >&2 || true
    busy=1
  fi
done
((busy == 0)) || exit 1

# Postfix daemons run as user postfix and must reach the queue under DIR.
chmod 755 "$DIR"
p=$DIR
while [[ $p != / ]]; do
  p=$(dirname "$p")
  if ! runuser -u postfix -- test -x "$p"; then
    echo "interop: user postfix cannot traverse $p; use a DIR it can reach (e.g. under /tmp)" >&2
    exit 1
  fi
done

rm -rf "$DIR/postfix-conf" "$DIR/postfix-queue" "$DIR/postfix-data" "$DIR/tls"
rm -f "$DIR/env" "$DIR/postfix.log" "$DIR/aiosmtpd.log" "$DIR/aiosmtpd-messages.jsonl" "$DIR/ca.pem"

# --- certificates ------------------------------------------------------------
tls=$DIR/tls
mkdir -p "$tls"
cat >"$tls/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = relaymail interop test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
cat >"$tls/server.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
(
  umask 077
  openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 30 \
    -config "$tls/ca.cnf" -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
    -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
  openssl x509 -req -sha256 -days 30 -in "$tls/server.csr" -CA "$tls/ca.pem" \
    -CAkey "$tls/ca.key" -set_serial "0x$(openssl rand -hex 8)" \
    -extfile "$tls/server.ext" -out "$tls/server.pem" 2>/dev/null
)
chmod 644 "$tls/ca.pem" "$tls/server.pem"
cp "$tls/ca.pem" "$DIR/ca.pem"
openssl verify -CAfile "$DIR/ca.pem" "$tls/server.pem" >/dev/null

# --- postfix -----------------------------------------------------------------
conf=$DIR/postfix-conf
mkdir -p "$conf"
cat >"$conf/main.cf" <<EOF
# relaymail interop: receive on 127.0.0.1, deliver nothing (all discarded).
compatibility_level = 3.6
queue_directory = $DIR/postfix-queue
data_directory = $DIR/postfix-data
mail_owner = postfix
setgid_group = postdrop
myhostname = localhost
mydomain = localdomain
myorigin = localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks_style = host
mynetworks = 127.0.0.0/8
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
default_transport = discard
relay_transport = discard
local_transport = discard
virtual_transport = discard
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
biff = no
append_dot_mydomain = no
readme_directory = no
smtputf8_enable = yes
message_size_limit = 10240000
mailbox_size_limit = 0
smtpd_banner = \$myhostname ESMTP relaymail-interop Postfix
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access texthash:$conf/recipient_access, permit_mynetworks, reject_unauth_destination
smtpd_tls_security_level = may
smtpd_tls_cert_file = $tls/server.pem
smtpd_tls_key_file = $tls/server.key
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_tls_session_cache_database =
maillog_file = $DIR/postfix.log
maillog_file_prefixes = $DIR
EOF
cat >"$conf/recipient_access" <<'EOF'
reject@example.net 550 5.1.1 refused for relaymail interop tests
dkim-hold@example.net HOLD relaymail DKIM interop: kept in the hold queue to be read back
EOF
cat >"$conf/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd
127.0.0.1:$POSTFIX_SMTPS_PORT inet n - n - - smtpd
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
# Postfix waits until a config file's mtime is in the past (~1.5 s here):
# backdate the freshly written files instead.
touch -d "@$(($(date +%s) - 60))" "$conf"/*
# `postfix start` creates the queue tree below this with the right owners
# (its quick check-fatal); the postfix command logs to maillog_file.
mkdir -m 755 "$DIR/postfix-queue"
if ! postfix -c "$conf" start >"$DIR/postfix-setup.log" 2>&1; then
  echo "interop: postfix start failed:" >&2
  postfix -c "$conf" check >>"$DIR/postfix-setup.log" 2>&1
  cat "$DIR/postfix-setup.log" "$DIR/postfix.log" >&2 2>/dev/null
  exit 1
fi

# --- aiosmtpd ----------------------------------------------------------------
: >"$DIR/aiosmtpd-messages.jsonl"
setsid "$PYTHON" "$here/aiosmtpd_server.py" \
  --cert "$tls/server.pem" --key "$tls/server.key" \
  --messages "$DIR/aiosmtpd-messages.jsonl" \
  --user "$AIOSMTPD_USER" --password "$AIOSMTPD_PASSWORD" \
  --starttls-port "$AIOSMTPD_STARTTLS_PORT" --smtps-port "$AIOSMTPD_SMTPS_PORT" \
  --plain-port "$AIOSMTPD_PLAIN_PORT" \
  </dev/null >"$DIR/aiosmtpd.log" 2>&1 &
echo $! >"$DIR/aiosmtpd.pid"

# --- wait for every greeting (bounded) -----------------------------------------
fail() {
  echo "interop: $*" >&2
  for f in postfix-setup.log postfix.log aiosmtpd.log; do
    if [[ -s $DIR/$f ]]; then
      echo "----- $DIR/$f (last 60 lines)" >&2
      tail -n 60 "$DIR/$f" >&2
    fi
  done
  bash "$here/stop.sh" "$DIR" >&2 || true
  exit 1
}

postfix_pid=
for _ in $(seq 1 100); do
  if [[ -s $DIR/postfix-queue/pid/master.pid ]]; then
    postfix_pid=$(tr -d ' \n' <"$DIR/postfix-queue/pid/master.pid")
    [[ -n $postfix_pid ]] && kill -0 "$postfix_pid" 2>/dev/null && break
  fi
  sleep 0.1
done
[[ -n $postfix_pid ]] || fail "postfix master did not write its pid"
echo "$postfix_pid" >"$DIR/postfix.pid"

if ! "$PYTHON" - "$DIR/ca.pem" "$DIR/aiosmtpd.pid" \
    "$POSTFIX_PORT:plain" "$POSTFIX_SMTPS_PORT:tls" \
    "$AIOSMTPD_STARTTLS_PORT:plain" "$AIOSMTPD_SMTPS_PORT:tls" "$AIOSMTPD_PLAIN_PORT:plain" <<'PY'
import os, socket, ssl, sys, time
ca, pidfile, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
ctx = ssl.create_default_context(cafile=ca)
deadline = time.monotonic() + 30
pid = int(open(pidfile).read())
for target in targets:
    port, kind = target.split(":")
    last = None
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit("aiosmtpd exited")
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=2) as s:
                if kind == "tls":
                    s = ctx.wrap_socket(s, server_hostname="localhost")
                s.settimeout(5)
                greeting = s.recv(512)
                if greeting.startswith(b"220"):
                    print(f"interop: 127.0.0.1:{port} greets: {greeting.decode(errors='replace').strip()}")
                    s.sendall(b"QUIT\r\n")
                    break
                last = f"unexpected greeting {greeting!r}"
        except OSError as e:
            last = repr(e)
        if time.monotonic() > deadline:
            sys.exit(f"127.0.0.1:{port} did not greet within 30 s ({last})")
        time.sleep(0.1)
PY
then
  fail "a server did not come up"
fi

cat >"$DIR/env" <<EOF
export RELAYMAIL_INTEROP=1
export RELAYMAIL_INTEROP_DIR=$DIR
export RELAYMAIL_INTEROP_CA=$DIR/ca.pem
export RELAYMAIL_POSTFIX_PORT=$POSTFIX_PORT
export RELAYMAIL_POSTFIX_SMTPS_PORT=$POSTFIX_SMTPS_PORT
export RELAYMAIL_AIOSMTPD_STARTTLS_PORT=$AIOSMTPD_STARTTLS_PORT
export RELAYMAIL_AIOSMTPD_SMTPS_PORT=$AIOSMTPD_SMTPS_PORT
export RELAYMAIL_AIOSMTPD_PLAIN_PORT=$AIOSMTPD_PLAIN_PORT
export RELAYMAIL_AIOSMTPD_USER=$AIOSMTPD_USER
export RELAYMAIL_AIOSMTPD_PASSWORD=$AIOSMTPD_PASSWORD
export RELAYMAIL_POSTFIX_LOG=$DIR/postfix.log
export RELAYMAIL_AIOSMTPD_LOG=$DIR/aiosmtpd-messages.jsonl
EOF
echo "interop: servers up; source $DIR/env"
