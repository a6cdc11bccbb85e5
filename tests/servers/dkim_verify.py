"""Verifies the DKIM signature of each message file given, as a receiving
mail server would, with dkimpy (PyPI) and the public key handed in instead
of looked up in DNS. Prints one JSON line per file: {"file", "ok", "d", "s"}.

    python3 dkim_verify.py PUBLIC_KEY_BASE64 FILE...
"""

import json
import re
import sys

import dkim


def main():
    public_key, files = sys.argv[1], sys.argv[2:]
    record = ("v=DKIM1; k=rsa; p=" + public_key).encode()
    for path in files:
        raw = open(path, "rb").read()
        # smtp-sink dumps with bare LF line ends; SMTP carried CRLF.
        message = re.sub(rb"\r?\n", b"\r\n", raw)
        # Start at the signature: smtp-sink puts its own X- lines first.
        start = message.find(b"DKIM-Signature:")
        message = message[start:] if start >= 0 else message
        tags = dict(
            t.strip().split("=", 1)
            for t in re.search(rb"DKIM-Signature:(.*?)\r\n(?![ \t])", message, re.S)
            .group(1)
            .decode()
            .replace("\r\n", "")
            .split(";")
            if "=" in t
        ) if start >= 0 else {}
        ok = start >= 0 and dkim.verify(message, dnsfunc=lambda name, timeout=5: record)
        print(json.dumps({"file": path, "ok": bool(ok), "d": tags.get("d"), "s": tags.get("s")}))


if __name__ == "__main__":
    main()
