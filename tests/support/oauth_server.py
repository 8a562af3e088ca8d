"""A small OAuth2 authorization server for the tests: a token endpoint (RFC 6749 client
credentials, with a client secret or a JWT client assertion; RFC 7523 JWT bearer for Google
service accounts and LINE WORKS) and RFC 7662 introspection, which Dovecot's oauth2 passdb and
the XOAUTH2 SMTP server ask. JWT signatures are verified with the `cryptography` package.

usage: oauth_server.py PORT CONFIG.json
CONFIG (re-read at every request, so a test can change it):
  {"lifetime": 3,                       # seconds a token lives
   "clients": {"ID": {"secret": "…",    # client credentials
                      "public_key": "PEM",   # or: a client assertion / JWT bearer signed with it
                      "user": "pmo"}}}  # the mailbox user the token is for
Control: POST /revoke-all (every token issued so far is inactive), GET /stats.
"""
import base64
import json
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

PORT, CONFIG = int(sys.argv[1]), sys.argv[2]
LOCK = threading.Lock()
TOKENS = {}  # token -> {"user", "expires", "revoked"}
STATS = {"fetches": 0, "issued": 0, "refused": 0, "introspections": 0, "active": 0,
         "grants": {}, "claims": [], "scopes": []}


def config():
    with open(CONFIG) as f:
        return json.load(f)


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def verify_jwt(token, public_pem):
    head, body, sig = token.split(".")
    key = serialization.load_pem_public_key(public_pem.encode())
    key.verify(b64url(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    claims = json.loads(b64url(body))
    now = time.time()
    if not (claims["iat"] - 60 <= now <= claims["exp"]):
        raise ValueError("expired or not yet valid")
    return json.loads(b64url(head)), claims


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                self.reply(200, STATS)
        else:
            self.reply(404, {"error": "not_found"})

    def form(self):
        n = int(self.headers.get("Content-Length") or 0)
        return {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(n).decode()).items()}

    def do_POST(self):
        if self.path == "/revoke-all":
            with LOCK:
                for t in TOKENS.values():
                    t["revoked"] = True
            return self.reply(200, {"revoked": len(TOKENS)})
        f = self.form()
        if self.path == "/introspect":
            with LOCK:
                STATS["introspections"] += 1
                t = TOKENS.get(f.get("token", ""))
                active = bool(t) and not t["revoked"] and t["expires"] > time.time()
                if active:
                    STATS["active"] += 1
                    return self.reply(200, {"active": True, "username": t["user"]})
            return self.reply(200, {"active": False})
        if not self.path.endswith("/token"):
            return self.reply(404, {"error": "not_found"})
        cfg = config()
        grant = f.get("grant_type", "")
        with LOCK:
            STATS["fetches"] += 1
            STATS["grants"][grant] = STATS["grants"].get(grant, 0) + 1
            STATS["scopes"].append(f.get("scope", ""))
        try:
            user = self.authenticate(cfg, grant, f)
        except Exception as e:  # noqa: BLE001 - every failure is an OAuth2 error answer
            with LOCK:
                STATS["refused"] += 1
            return self.reply(401 if "client" in str(e) else 400, {
                "error": "invalid_client" if "client" in str(e) else "invalid_grant",
                "error_description": f"AADSTS7000215: {e}"})
        token = secrets.token_hex(16)
        with LOCK:
            STATS["issued"] += 1
            TOKENS[token] = {"user": user, "expires": time.time() + cfg["lifetime"],
                             "revoked": False}
        return self.reply(200, {"access_token": token, "token_type": "Bearer",
                                "expires_in": cfg["lifetime"]})

    def authenticate(self, cfg, grant, f):
        clients = cfg["clients"]
        if grant == "client_credentials":
            cid = f.get("client_id", "")
            if cid not in clients:
                raise ValueError(f"unknown client {cid}")
            c = clients[cid]
            if "client_assertion" in f:
                _, claims = verify_jwt(f["client_assertion"], c["public_key"])
                assert claims["iss"] == cid and claims["sub"] == cid, "client assertion iss/sub"
                assert claims["aud"].endswith("/token"), "client assertion aud"
                with LOCK:
                    STATS["claims"].append(claims)
            elif f.get("client_secret") != c.get("secret"):
                raise ValueError("Invalid client secret provided")
            return c["user"]
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            # Google: the assertion's iss is the service account; LINE WORKS: iss is the client
            # id and the client secret comes along.
            head, body, _ = f["assertion"].split(".")
            iss = json.loads(b64url(body))["iss"]
            if iss not in clients:
                raise ValueError(f"unknown client {iss}")
            c = clients[iss]
            _, claims = verify_jwt(f["assertion"], c["public_key"])
            if "secret" in c and f.get("client_secret") != c["secret"]:
                raise ValueError("Invalid client secret provided")
            with LOCK:
                STATS["claims"].append(claims)
            return claims.get("sub") or c["user"]
        raise ValueError(f"unsupported grant {grant}")


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
