"""Verifies DKIM signatures made by relaymail with Python's dkimpy, an
implementation independent of relaymail's (tests/dkim/dkimpy.rs runs it).

Reads one case per line on stdin, fields separated by spaces:

    NAME EXPECT DNS_NAME TXT_B64 MESSAGE_B64

EXPECT is `pass` or `fail`; DNS_NAME is where the public key is published
(`selector._domainkey.domain`) and TXT_B64 the TXT record there, base64. No
DNS is queried: dkimpy's lookup is replaced by these records, and a name not
given is NXDOMAIN. Prints one line per case (`ok NAME` or `FAILED NAME: ...`)
and ends with `dkimpy: N passed, N failed`. Exits 0 when every case went as
expected, 1 otherwise, and 3 (after a line starting `skipped:`) when dkimpy
or PyNaCl (for Ed25519) is not installed.
"""

import base64
import logging
import sys

try:
    import dkim
    import nacl.signing  # noqa: F401  (dkimpy verifies ed25519-sha256 with it)
except ImportError as e:
    print(f"skipped: {e.name} is not installed (pip install dkimpy pynacl)")
    sys.exit(3)


class Collect(logging.Handler):
    """Keeps dkimpy's log lines: they say why a signature failed."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def main():
    passed = failed = 0
    for line in sys.stdin.read().splitlines():
        if not line.strip():
            continue
        name, expect, dns_name, txt_b64, message_b64 = line.split(" ")
        records = {dns_name.lower().rstrip(".") + ".": base64.b64decode(txt_b64)}
        message = base64.b64decode(message_b64)

        def lookup(qname, timeout=5):
            if isinstance(qname, bytes):
                qname = qname.decode()
            return records.get(qname.lower().rstrip(".") + ".")

        log = logging.getLogger(f"dkimpy.{name}")
        log.setLevel(logging.DEBUG)
        log.propagate = False
        collect = Collect()
        log.addHandler(collect)
        try:
            verified = dkim.verify(message, logger=log, dnsfunc=lookup, minkey=1024)
        except Exception as e:  # a verifier crash is a failure, with its reason
            verified = False
            collect.lines.append(f"exception: {e!r}")
        got = "pass" if verified else "fail"
        if got == expect:
            passed += 1
            print(f"ok {name}: {got}")
        else:
            failed += 1
            why = "; ".join(collect.lines[-3:]) or "no log"
            print(f"FAILED {name}: expected {expect}, dkimpy says {got} ({why})")
    print(f"dkimpy: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


main()
