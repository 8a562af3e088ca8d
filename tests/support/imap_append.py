"""Appends messages to an IMAP mailbox with Python's imaplib (a real client library).

usage: imap_append.py PORT USER PASSWORD MAILBOX FILE...
Prints the number of messages in the mailbox afterwards.
"""
import imaplib
import sys
import time

port, user, password, mailbox = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
imap = imaplib.IMAP4("127.0.0.1", port)
imap.login(user, password)
for path in sys.argv[5:]:
    with open(path, "rb") as f:
        data = f.read()
    typ, resp = imap.append(mailbox, None, imaplib.Time2Internaldate(time.time()), data)
    assert typ == "OK", resp
typ, data = imap.select(mailbox, readonly=True)
print(int(data[0]))
imap.logout()
