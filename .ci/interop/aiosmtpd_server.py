#!/usr/bin/env python3
"""aiosmtpd listeners for relaymail's interop tests (127.0.0.1 only).

One process, one asyncio loop, three listeners:

  starttls  127.0.0.1:3587  STARTTLS required, then AUTH PLAIN/LOGIN required
  smtps     127.0.0.1:3465  implicit TLS, AUTH PLAIN/LOGIN required
  plain     127.0.0.1:3525  no TLS at all, AUTH offered in clear, not required

Every accepted message is appended as one JSON line to --messages.
Stops cleanly on SIGTERM/SIGINT.
"""

import argparse
import asyncio
import base64
import json
import logging
import os
import signal
import ssl
import sys
import time
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

LISTENERS = {
    # name: (default port, implicit TLS, STARTTLS offered, auth required)
    "starttls": (3587, False, True, True),
    "smtps": (3465, True, False, True),
    "plain": (3525, False, False, False),
}


class Recorder:
    """aiosmtpd handler: accepts every message and records it."""

    def __init__(self, path, listener):
        self.path = path
        self.listener = listener

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        user = None
        if session.authenticated:
            login = session.auth_data
            if isinstance(login, LoginPassword):
                login = login.login
            if isinstance(login, bytes):
                login = login.decode("utf-8", "replace")
            user = login
        head = content[:200]
        record = {
            "listener": self.listener,
            "port": server.transport.get_extra_info("sockname")[1] if transport else None,
            "time": time.time(),
            "peer": list(session.peer) if session.peer else None,
            "helo": session.host_name,
            "mail_from": envelope.mail_from,
            "mail_options": envelope.mail_options,
            "rcpt_tos": envelope.rcpt_tos,
            "rcpt_options": envelope.rcpt_options,
            "smtputf8": envelope.smtp_utf8,
            "size": len(content),
            "tls": tls,
            "auth_user": user,
            "content_head": head.decode("utf-8", "replace"),
            "content_head_b64": base64.b64encode(head).decode("ascii"),
        }
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        # One write() on an O_APPEND descriptor: a line is never interleaved.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return "250 OK message accepted"


def make_authenticator(user, password):
    want_user = user.encode("utf-8")
    want_password = password.encode("utf-8")

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            mechanism in ("PLAIN", "LOGIN")
            and isinstance(auth_data, LoginPassword)
            and auth_data.login == want_user
            and auth_data.password == want_password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return authenticator


async def serve(args):
    loop = asyncio.get_running_loop()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    authenticator = make_authenticator(args.user, args.password)
    ports = {"starttls": args.starttls_port, "smtps": args.smtps_port, "plain": args.plain_port}

    servers = []
    for name, (_, implicit, starttls, auth_required) in LISTENERS.items():
        handler = Recorder(args.messages, name)

        def factory(handler=handler, implicit=implicit, starttls=starttls,
                    auth_required=auth_required):
            return SMTP(
                handler,
                hostname="localhost",
                ident="relaymail-interop aiosmtpd",
                data_size_limit=10240000,
                enable_SMTPUTF8=True,
                decode_data=False,  # keeps 8BITMIME advertised
                tls_context=tls if starttls else None,
                require_starttls=starttls,
                auth_required=auth_required,
                # aiosmtpd only knows about STARTTLS; on the implicit-TLS
                # listener the whole connection is already encrypted.
                auth_require_tls=starttls,
                authenticator=authenticator,
                timeout=60,
                loop=loop,
            )

        server = await loop.create_server(
            factory, host="127.0.0.1", port=ports[name],
            ssl=tls if implicit else None, reuse_address=True,
        )
        servers.append(server)
        logging.info("listening: %s on 127.0.0.1:%d", name, ports[name])

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    logging.info("stopping")
    for server in servers:
        server.close()
    for server in servers:
        await server.wait_closed()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--messages", required=True, help="JSON-lines file to append to")
    p.add_argument("--user", default="relaymail")
    p.add_argument("--password", default="interop-secret")
    p.add_argument("--starttls-port", type=int, default=LISTENERS["starttls"][0])
    p.add_argument("--smtps-port", type=int, default=LISTENERS["smtps"][0])
    p.add_argument("--plain-port", type=int, default=LISTENERS["plain"][0])
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    warnings.simplefilter("ignore", DeprecationWarning)
    # The implicit-TLS listener requires AUTH with auth_require_tls=False
    # (aiosmtpd only counts STARTTLS as TLS); its warning about that is moot.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    # aiosmtpd's own AUTH code sets the deprecated Session.login_data itself.
    quiet = ("auth_required == True but auth_require_tls == False",
             "Session.login_data is deprecated")
    logging.getLogger("mail.log").addFilter(
        lambda r: not any(q in r.getMessage() for q in quiet)
    )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
