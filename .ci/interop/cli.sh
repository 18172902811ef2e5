#!/usr/bin/env bash
# Drives the command-line example (examples/relaymail.rs) against the interop
# servers, exactly as other tools will: `cargo run --release --example
# relaymail -- …`. Usage: cli.sh DIR (after start.sh DIR).
# Each check prints one line; the script fails on the first failed check.
set -euo pipefail
dir=${1:?usage: cli.sh DIR}
# shellcheck disable=SC1091
source "$dir/env"
cd "$(dirname "$0")/../.."

cargo build --release --example relaymail
cli() { cargo run -q --release --example relaymail -- "$@"; }
fail() { echo "cli: FAILED: $*"; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# 1. send through Postfix with STARTTLS, JSON outcome, then find the queue id
#    in Postfix's log as delivered.
rcpt="cli-$$@example.net"
cli send --host 127.0.0.1 --port "$RELAYMAIL_POSTFIX_PORT" --tls starttls \
  --ca-file "$RELAYMAIL_INTEROP_CA" --helo cli.example.com --timeout 10 \
  --from alerts@example.com --to "$rcpt" --to reject@example.net \
  --subject "CLI interop" --body "Sent by the relaymail CLI." --json >"$out/send.json" \
  || fail "send via Postfix exited $?"
grep -q '"ok":true' "$out/send.json" || fail "send via Postfix: $(cat "$out/send.json")"
grep -q "\"accepted\":\[\"$rcpt\"\]" "$out/send.json" || fail "accepted list: $(cat "$out/send.json")"
grep -q '"refused":\["reject@example.net: 550' "$out/send.json" || fail "refused list: $(cat "$out/send.json")"
grep -q '"tls":"TLSv1' "$out/send.json" || fail "no TLS: $(cat "$out/send.json")"
qid=$(sed -n 's/.*queued as \([0-9A-Za-z]*\).*/\1/p' "$out/send.json")
[ -n "$qid" ] || fail "no queue id in $(cat "$out/send.json")"
for _ in $(seq 1 100); do
  grep -q "$qid: to=<$rcpt>.*status=sent" "$RELAYMAIL_POSTFIX_LOG" && break
  sleep 0.1
done
grep -q "$qid: to=<$rcpt>.*status=sent" "$RELAYMAIL_POSTFIX_LOG" || fail "Postfix did not log $qid as sent"
echo "cli: ok send via Postfix STARTTLS (queue id $qid delivered, reject@ refused with 550)"

# 2. send an .eml file with AUTH through aiosmtpd over implicit TLS; the
#    password only in RELAYMAIL_PASSWORD; bare LF and a lone dot in the file.
rcpt2="cli-eml-$$@example.net"
printf 'From: alerts@example.com\nTo: %s\nSubject: eml\n\nfirst\n.\nlast\n' "$rcpt2" >"$out/msg.eml"
RELAYMAIL_PASSWORD="$RELAYMAIL_AIOSMTPD_PASSWORD" cli send --host 127.0.0.1 \
  --port "$RELAYMAIL_AIOSMTPD_SMTPS_PORT" --tls implicit --ca-file "$RELAYMAIL_INTEROP_CA" \
  --user "$RELAYMAIL_AIOSMTPD_USER" --from alerts@example.com --to "$rcpt2" \
  --eml "$out/msg.eml" --json >"$out/eml.json" || fail "send --eml exited $?"
grep -q '"auth":"PLAIN"' "$out/eml.json" || fail "send --eml: $(cat "$out/eml.json")"
line=$(grep "\"$rcpt2\"" "$RELAYMAIL_AIOSMTPD_LOG") || fail "aiosmtpd has no message for $rcpt2"
python3 - "$line" "$rcpt2" <<'EOF' || fail "aiosmtpd received other bytes than the .eml"
import base64, json, sys
rec = json.loads(sys.argv[1])
want = ("From: alerts@example.com\r\nTo: %s\r\nSubject: eml\r\n\r\nfirst\r\n.\r\nlast\r\n" % sys.argv[2]).encode()
got = base64.b64decode(rec["content_head_b64"])
assert got == want and rec["auth_user"] == "relaymail" and rec["tls"], (got, rec)
EOF
echo "cli: ok send --eml via aiosmtpd implicit TLS + AUTH PLAIN (bytes normalised as expected)"

# 3. verify with a wrong password: non-zero exit, the stage and the mechanism
#    on stderr, never the password.
set +e
RELAYMAIL_PASSWORD="cli-wrong-secret" cli verify --host 127.0.0.1 \
  --port "$RELAYMAIL_AIOSMTPD_STARTTLS_PORT" --tls starttls --ca-file "$RELAYMAIL_INTEROP_CA" \
  --user "$RELAYMAIL_AIOSMTPD_USER" --json >"$out/verify.json" 2>"$out/verify.err"
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "verify with a wrong password exited 0"
grep -q '^relaymail: auth: ' "$out/verify.err" || fail "stderr: $(cat "$out/verify.err")"
grep -q '"stage":"auth"' "$out/verify.json" || fail "json: $(cat "$out/verify.json")"
if grep -q "cli-wrong-secret" "$out/verify.json" "$out/verify.err"; then fail "the password was printed"; fi
echo "cli: ok verify with a wrong password fails at auth (exit $rc), password not printed"

# 4. a common misconfiguration: implicit TLS against a STARTTLS port.
set +e
cli verify --host 127.0.0.1 --port "$RELAYMAIL_POSTFIX_PORT" --tls implicit \
  --ca-file "$RELAYMAIL_INTEROP_CA" --timeout 5 2>"$out/implicit.err" >/dev/null
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "implicit TLS against a STARTTLS port exited 0"
grep -q "speaks plain SMTP" "$out/implicit.err" || fail "no hint: $(cat "$out/implicit.err")"
echo "cli: ok implicit TLS against a STARTTLS port: $(cat "$out/implicit.err")"

# 5. verify against Postfix: capabilities as JSON.
cli verify --host 127.0.0.1 --port "$RELAYMAIL_POSTFIX_SMTPS_PORT" --tls implicit \
  --ca-file "$RELAYMAIL_INTEROP_CA" --json >"$out/ok.json" || fail "verify Postfix implicit exited $?"
grep -q '"CHUNKING"' "$out/ok.json" || fail "verify: $(cat "$out/ok.json")"
echo "cli: ok verify Postfix implicit TLS: $(cat "$out/ok.json")"
# 6. bulk mode: 300 generated messages through a pooled Mailer, 3
#    connections of at most 25 messages each, against Postfix over STARTTLS.
cli send --host 127.0.0.1 --port "$RELAYMAIL_POSTFIX_PORT" --tls starttls \
  --ca-file "$RELAYMAIL_INTEROP_CA" --from alerts@example.com --to "bulk-$$@example.net" \
  --count 300 --connections 3 --max-per-connection 25 --size 4096 --json >"$out/bulk.json" 2>"$out/bulk.err" \
  || fail "bulk send exited $?: $(cat "$out/bulk.err")"
grep -q '"sent":300,"failed":0' "$out/bulk.json" || fail "bulk: $(cat "$out/bulk.json")"
grep -q '"connections_opened":12[,}]' "$out/bulk.json" || fail "bulk: expected 300/25 = 12 connections: $(cat "$out/bulk.json")"
[ ! -s "$out/bulk.err" ] || fail "no progress bar when stderr is not a terminal: $(cat "$out/bulk.err")"
echo "cli: ok bulk send via Postfix: $(cat "$out/bulk.json")"
echo "cli: all passed"
