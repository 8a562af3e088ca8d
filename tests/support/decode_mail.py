#!/usr/bin/env python3
"""Decodes every message in a Maildir or a directory of .eml files with Python's `email`
package (an implementation independent of pmoflow's) and prints them as JSON."""
import base64
import email.policy
import json
import pathlib
import sys
from email.parser import BytesParser

root = pathlib.Path(sys.argv[1])
# A Maildir's tmp/ holds messages still being written; they show up in new/ when complete.
files = sorted(p for p in root.rglob("*")
               if p.is_file() and not p.name.startswith(".") and p.parent.name != "tmp")
out = []
for path in files:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        continue
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    body = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    out.append({
        "file": path.name,
        "message_id": msg["Message-ID"],
        "from": str(msg["From"]),
        "to": [str(a) for a in (msg["To"].addresses if msg["To"] else [])],
        "cc": [str(a) for a in (msg["Cc"].addresses if msg["Cc"] else [])],
        "bcc_header": msg["Bcc"] is not None,
        # The SMTP envelope's recipients, as the aiosmtpd sink recorded them.
        "rcpt_to": str(msg["X-RcptTo"]) if msg["X-RcptTo"] else None,
        "subject": str(msg["Subject"]),
        "reply_to": str(msg["Reply-To"]) if msg["Reply-To"] else None,
        "date": str(msg["Date"]),
        "auto_submitted": msg["Auto-Submitted"],
        "auto_response_suppress": msg["X-Auto-Response-Suppress"],
        "body": body.get_content() if body is not None else None,
        "html": html.get_content() if html is not None else None,
        "attachments": [a.get_filename() for a in msg.iter_attachments()],
        "attachment_texts": [a.get_content() if a.get_content_maintype() == "text" else None
                             for a in msg.iter_attachments()],
        "attachment_base64": [base64.b64encode(a.get_payload(decode=True) or b"").decode()
                              for a in msg.iter_attachments()],
    })
print(json.dumps(out, ensure_ascii=False))
