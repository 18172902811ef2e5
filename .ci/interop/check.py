#!/usr/bin/env python3
"""Smoke test of the interop servers with Python's smtplib.

Usage: check.py DIR   (after start.sh DIR; reads DIR/env)

Checks what relaymail's interop tests rely on: the extensions each listener
offers, TLS with DIR/ca.pem, delivery (Postfix log, aiosmtpd JSON lines),
the 550 recipient, AUTH success and 535, and AUTH offered in clear on the
plain aiosmtpd port. Prints one line per check and a closing count.
"""

import json
import re
import smtplib
import socket
import ssl
import sys
import time
import traceback
import uuid

HOST = "127.0.0.1"
results = []


def load_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"export (\w+)=(.*)$", line.strip())
            if m:
                env[m.group(1)] = m.group(2)
    return env


class Local(smtplib.SMTP):
    """Connects to 127.0.0.1 but uses `name` for TLS (SNI + verification)."""

    def __init__(self, port, name="localhost", timeout=10):
        super().__init__(host=name, port=port, local_hostname="client.example",
                         timeout=timeout)

    def _get_socket(self, host, port, timeout):
        return socket.create_connection((HOST, port), timeout)


class LocalSSL(smtplib.SMTP_SSL):
    def __init__(self, port, context, name="localhost", timeout=10):
        super().__init__(host=name, port=port, local_hostname="client.example",
                         timeout=timeout, context=context)

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((HOST, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=self._host)


def check(name):
    def deco(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report every failure
            results.append((name, False))
            print(f"FAIL {name}: {e!r}")
            traceback.print_exc(limit=3)
        else:
            results.append((name, True))
            print(f"ok   {name}")
        return fn
    return deco


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def message(frm, to, subject, body="interop smoke test\r\n"):
    return (
        f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4()}@client.example>\r\n\r\n{body}"
    ).encode("utf-8")


def send(s, frm, to, data, mail_options=()):
    code, resp = s.mail(frm, list(mail_options))
    expect(code == 250, f"MAIL FROM: {code} {resp!r}")
    code, resp = s.rcpt(to)
    expect(code in (250, 251), f"RCPT TO: {code} {resp!r}")
    code, resp = s.data(data)
    expect(code == 250, f"DATA: {code} {resp!r}")
    return resp.decode("utf-8", "replace")


def auth_code(s, mech):
    """AUTH with s.user/s.password; returns the final (code, reply)."""
    try:
        return s.auth(mech, getattr(s, "auth_" + mech.lower()))
    except smtplib.SMTPAuthenticationError as e:
        return e.smtp_code, e.smtp_error


def wait_for(pred, seconds=20, what="condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    env = load_env(f"{sys.argv[1]}/env")
    ctx = ssl.create_default_context(cafile=env["RELAYMAIL_INTEROP_CA"])
    pf = int(env["RELAYMAIL_POSTFIX_PORT"])
    pfs = int(env["RELAYMAIL_POSTFIX_SMTPS_PORT"])
    a_tls = int(env["RELAYMAIL_AIOSMTPD_STARTTLS_PORT"])
    a_ssl = int(env["RELAYMAIL_AIOSMTPD_SMTPS_PORT"])
    a_plain = int(env["RELAYMAIL_AIOSMTPD_PLAIN_PORT"])
    user = env["RELAYMAIL_AIOSMTPD_USER"]
    password = env["RELAYMAIL_AIOSMTPD_PASSWORD"]
    pf_log = env["RELAYMAIL_POSTFIX_LOG"]
    jsonl = env["RELAYMAIL_AIOSMTPD_LOG"]
    queued = {}

    def postfix_delivered(qid, rcpt):
        pat = re.compile(rf"\b{qid}: to=<{re.escape(rcpt)}>.*status=sent")
        with open(pf_log, encoding="utf-8", errors="replace") as f:
            return any(pat.search(line) for line in f)

    def aiosmtpd_record(subject):
        with open(jsonl, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                if f"Subject: {subject}" in rec["content_head"]:
                    return rec
        return None

    @check("postfix 2525: EHLO offers STARTTLS PIPELINING CHUNKING SMTPUTF8 SIZE DSN 8BITMIME")
    def _():
        with Local(pf) as s:
            s.ehlo()
            for ext in ("starttls", "pipelining", "chunking", "smtputf8", "size",
                        "dsn", "8bitmime", "enhancedstatuscodes"):
                expect(s.has_extn(ext), f"{ext} missing: {s.esmtp_features}")
            expect(s.esmtp_features["size"] == "10240000", s.esmtp_features["size"])
            expect(not s.has_extn("auth"), "postfix must not offer AUTH")

    @check("postfix 2525: STARTTLS (CA, name localhost), message queued")
    def _():
        with Local(pf) as s:
            s.starttls(context=ctx)
            s.ehlo()
            expect(not s.has_extn("starttls"), "STARTTLS offered twice")
            resp = send(s, "sender@example.org", "someone@example.com",
                        message("sender@example.org", "someone@example.com", "pf-starttls"),
                        ["BODY=8BITMIME"])
            m = re.match(r"2\.0\.0 Ok: queued as (\w+)", resp)
            expect(m, f"unexpected DATA reply {resp!r}")
            queued["starttls"] = m.group(1)

    @check("postfix 2525: recipient reject@example.net gets 550")
    def _():
        with Local(pf, name="127.0.0.1") as s:  # IP SAN this time
            s.starttls(context=ctx)
            s.ehlo()
            code, _ = s.mail("sender@example.org")
            expect(code == 250, code)
            code, resp = s.rcpt("reject@example.net")
            expect(code == 550, f"{code} {resp!r}")
            code, _ = s.rcpt("other@example.net")
            expect(code == 250, f"other recipient: {code}")
            s.rset()

    @check("postfix 2525: SMTPUTF8 + CHUNKING (BDAT LAST) in clear text")
    def _():
        with Local(pf) as s:
            s.ehlo()
            code, resp = s.mail("sénder@exämple.org", ["SMTPUTF8", "BODY=8BITMIME"])
            expect(code == 250, f"{code} {resp!r}")
            code, resp = s.rcpt("rcpt@exämple.com")
            expect(code == 250, f"{code} {resp!r}")
            data = message("sénder@exämple.org", "rcpt@exämple.com", "pf-utf8", "héllo\r\n")
            s.send(b"BDAT %d LAST\r\n" % len(data) + data)
            code, resp = s.getreply()
            expect(code == 250 and b"queued as" in resp, f"BDAT: {code} {resp!r}")
            queued["utf8"] = resp.decode().rsplit(" ", 1)[1]

    @check("postfix 2465: implicit TLS, no STARTTLS offered, message queued")
    def _():
        with LocalSSL(pfs, ctx) as s:
            s.ehlo()
            expect(not s.has_extn("starttls"), "STARTTLS offered on implicit TLS")
            expect(s.has_extn("smtputf8") and s.has_extn("chunking"), s.esmtp_features)
            resp = send(s, "sender@example.org", "smtps@example.com",
                        message("sender@example.org", "smtps@example.com", "pf-smtps"))
            m = re.match(r"2\.0\.0 Ok: queued as (\w+)", resp)
            expect(m, resp)
            queued["smtps"] = m.group(1)

    @check("postfix: log shows every queued message discarded (status=sent)")
    def _():
        rcpts = {"starttls": "someone@example.com", "utf8": "rcpt@exämple.com",
                 "smtps": "smtps@example.com"}
        for key, qid in queued.items():
            wait_for(lambda: postfix_delivered(qid, rcpts[key]), what=f"{qid} status=sent")
        expect(len(queued) == 3, f"only {len(queued)} messages were queued")

    @check("aiosmtpd 3587: STARTTLS required before MAIL, AUTH only after TLS")
    def _():
        with Local(a_tls) as s:
            s.ehlo()
            expect(s.has_extn("starttls"), s.esmtp_features)
            expect(not s.has_extn("auth"), "AUTH offered before TLS")
            code, _ = s.mail("a@example.org")
            expect(code == 530, f"MAIL before STARTTLS: {code}")
            s.starttls(context=ctx)
            s.ehlo()
            expect(set(s.esmtp_features.get("auth", "").split()) >= {"PLAIN", "LOGIN"},
                   s.esmtp_features)
            expect(s.has_extn("smtputf8") and s.has_extn("8bitmime"), s.esmtp_features)
            code, _ = s.mail("a@example.org")
            expect(code == 530, f"MAIL before AUTH: {code}")

    @check("aiosmtpd 3587: wrong password gets 535")
    def _():
        for mech in ("PLAIN", "LOGIN"):
            with Local(a_tls) as s:
                s.starttls(context=ctx)
                s.ehlo()
                s.user, s.password = user, "wrong-" + password
                code, resp = auth_code(s, mech)
                expect(code == 535, f"{mech}: {code} {resp!r}")

    @check("aiosmtpd 3587: STARTTLS + AUTH PLAIN and LOGIN, messages recorded")
    def _():
        for mech in ("PLAIN", "LOGIN"):
            with Local(a_tls) as s:
                s.starttls(context=ctx)
                s.ehlo()
                s.user, s.password = user, password
                code, resp = auth_code(s, mech)
                expect(code == 235, f"{mech}: {code} {resp!r}")
                send(s, "a@example.org", "b@example.com",
                     message("a@example.org", "b@example.com", f"ai-starttls-{mech}"))
            rec = wait_for(lambda: aiosmtpd_record(f"ai-starttls-{mech}"), 5, "jsonl record")
            expect(rec["tls"] is True and rec["auth_user"] == user, rec)
            expect(rec["rcpt_tos"] == ["b@example.com"] and rec["mail_from"] == "a@example.org", rec)
            expect(rec["listener"] == "starttls" and rec["size"] > 0, rec)

    @check("aiosmtpd 3465: implicit TLS + AUTH required, SMTPUTF8 message recorded")
    def _():
        with LocalSSL(a_ssl, ctx, name="127.0.0.1") as s:
            s.ehlo()
            expect(not s.has_extn("starttls"), s.esmtp_features)
            code, _ = s.mail("a@example.org")
            expect(code == 530, f"MAIL before AUTH: {code}")
            s.rset()
            s.login(user, password)
            send(s, "ä@example.org", "ö@example.com",
                 message("ä@example.org", "ö@example.com", "ai-smtps"), ["SMTPUTF8"])
        rec = wait_for(lambda: aiosmtpd_record("ai-smtps"), 5, "jsonl record")
        expect(rec["tls"] is True and rec["auth_user"] == user and rec["smtputf8"], rec)
        expect(rec["rcpt_tos"] == ["ö@example.com"], rec)

    @check("aiosmtpd 3525: plain, AUTH offered in clear, no STARTTLS, no auth needed")
    def _():
        with Local(a_plain) as s:
            s.ehlo()
            expect(s.has_extn("auth"), f"AUTH not offered: {s.esmtp_features}")
            expect(not s.has_extn("starttls"), s.esmtp_features)
            send(s, "a@example.org", "plain@example.com",
                 message("a@example.org", "plain@example.com", "ai-plain"))
        rec = wait_for(lambda: aiosmtpd_record("ai-plain"), 5, "jsonl record")
        expect(rec["tls"] is False and rec["auth_user"] is None, rec)

    passed = sum(ok for _, ok in results)
    failed = len(results) - passed
    print(f"interop-check: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
