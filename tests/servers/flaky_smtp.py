"""An SMTP server that turns part of the traffic away, for the retry and
bounce tests (Postfix's smtp-sink rejects a command for all traffic or none).

Recipients whose address's local part ends in an even digit are turned
away at RCPT TO:
  mode `flaky`:   `451 4.3.0` on their first attempt, accepted after that;
  mode `unknown`: `550 5.1.1` (no such user) every time: a hard bounce.
  mode `tls-auth`: turns nobody away, but offers STARTTLS with CERT and
                  KEY and takes mail only after STARTTLS and AUTH as
                  squall / s3cret.
Each accepted message is appended to the log file as one JSON line: the
recipient, the Message-ID header, whether the session was under TLS and
who logged in, so a test can count deliveries and find duplicates.

    python3 flaky_smtp.py PORT LOG_FILE MODE [CERT KEY]

Built on aiosmtpd (PyPI), the standard asyncio SMTP server.
"""

import email.parser
import json
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Flaky:
    def __init__(self, log_path, mode):
        self.log_path = log_path
        self.mode = mode
        self.turned_away = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        even = local[-1:].isdigit() and int(local[-1]) % 2 == 0
        if even and self.mode == "unknown":
            return "550 5.1.1 No such user here"
        if even and self.mode == "flaky" and address not in self.turned_away:
            self.turned_away.add(address)
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        headers = email.parser.BytesHeaderParser().parsebytes(envelope.content)
        with open(self.log_path, "a") as log:
            for rcpt in envelope.rcpt_tos:
                log.write(json.dumps({
                    "rcpt": rcpt,
                    "message_id": headers.get("Message-ID"),
                    "tls": session.ssl is not None,
                    "login": session.auth_data.decode() if isinstance(session.auth_data, bytes) else None,
                }) + "\n")
        return "250 Message accepted"


def main():
    port, log_path, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    options = {}
    if mode == "tls-auth":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[4], sys.argv[5])

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login == b"squall"
                and auth_data.password == b"s3cret"
            )
            return AuthResult(success=ok, auth_data=auth_data.login if ok else None)

        options = dict(
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=authenticator,
        )
    controller = Controller(Flaky(log_path, mode), hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        threading.Event().wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
