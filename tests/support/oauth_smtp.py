"""A real SMTP server (aiosmtpd) that logs in with AUTH XOAUTH2, asking the test OAuth2 server
whether the token is active (RFC 7662), or with AUTH PLAIN/LOGIN and a password; refusals answer
like Exchange Online (`535 5.7.3 Authentication unsuccessful`). Delivers into a Maildir.

usage: oauth_smtp.py PORT MAILDIR INTROSPECT_URL USER [PASSWORD]
MAILDIR "-" discards the messages (aiosmtpd's Sink), for benchmarks.
"""
import base64
import json
import sys
import time
import urllib.parse
import urllib.request

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox, Sink
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

PORT, MAILDIR, INTROSPECT, USER = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
PASSWORD = sys.argv[5] if len(sys.argv) > 5 else None


def password_ok(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword) and PASSWORD is not None
          and auth_data.login.decode() == USER and auth_data.password.decode() == PASSWORD)
    return AuthResult(success=ok, handled=False)


class OAuthSMTP(SMTP):
    async def auth_XOAUTH2(self, server, args):
        if len(args) > 1:
            raw = base64.b64decode(args[1])
        else:
            raw = await server.challenge_auth("")
            if not isinstance(raw, bytes):
                return AuthResult(success=False, handled=True)
        parts = dict(p.split("=", 1) for p in raw.decode().split("\x01") if "=" in p)
        token = parts.get("auth", "").removeprefix("Bearer ")
        data = urllib.parse.urlencode({"token": token}).encode()
        with urllib.request.urlopen(INTROSPECT, data=data, timeout=5) as r:
            answer = json.load(r)
        if answer.get("active") and answer.get("username") == USER and parts.get("user") == USER:
            return AuthResult(success=True, auth_data=parts.get("user"))
        await server.push("535 5.7.3 Authentication unsuccessful [test server]")
        return AuthResult(success=False, handled=True)


class OAuthController(Controller):
    def factory(self):
        return OAuthSMTP(self.handler, **self.SMTP_kwargs)


controller = OAuthController(Sink() if MAILDIR == "-" else Mailbox(MAILDIR), hostname="127.0.0.1", port=PORT,
                             auth_require_tls=False, authenticator=password_ok,
                             auth_required=True)
controller.start()
while True:
    time.sleep(3600)
