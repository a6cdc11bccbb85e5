"""An SMTP server that turns part of the traffic away, for the retry and
bounce tests (Postfix's smtp-sink rejects a command for all traffic or none).

Recipients whose address's local part ends in an even digit are turned
away at RCPT TO:
  mode `flaky`:   `451 4.3.0` on their first attempt, accepted after that;
  mode `unknown`: `550 5.1.1` (no such user) every time: a hard bounce.
Each accepted message is appended to the log file as one JSON line: the
recipient and the Message-ID header, so a test can count deliveries and
find duplicates.

    python3 flaky_smtp.py PORT LOG_FILE MODE

Built on aiosmtpd (PyPI), the standard asyncio SMTP server.
"""

import email.parser
import json
import sys
import threading

from aiosmtpd.controller import Controller


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
        if even and address not in self.turned_away:
            self.turned_away.add(address)
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        headers = email.parser.BytesHeaderParser().parsebytes(envelope.content)
        with open(self.log_path, "a") as log:
            for rcpt in envelope.rcpt_tos:
                log.write(json.dumps({"rcpt": rcpt, "message_id": headers.get("Message-ID")}) + "\n")
        return "250 Message accepted"


def main():
    port, log_path, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    controller = Controller(Flaky(log_path, mode), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        threading.Event().wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
