#!/usr/bin/env python3
"""Runs Discourse's email_reply_trimmer fixtures (test/emails -> test/trimmed, MIT) through
`pmoflow inbound explain` and counts how many new texts match the peer's trimmed text.

The fixtures are not copied into this project: point the script at a checkout of
https://github.com/discourse/email_reply_trimmer (a work tree or a bare git directory).

    python3 tests/peer/email_reply_trimmer.py PEER_REPO [--bin PATH] [-v] [--diff NAME]

Each fixture body is wrapped in a minimal UTF-8 text/plain message; the comparison is the one
the peer's own test makes (both sides stripped), after CRLF -> LF and trailing spaces per line.
The cases that differ by design are listed in docs/replies.md.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from email.mime.text import MIMEText


def peer_files(repo, folder):
    """{name: text} of the peer's test/<folder>/*.txt, from a work tree or a git directory."""
    path = os.path.join(repo, "test", folder)
    if os.path.isdir(path):
        return {n: open(os.path.join(path, n), encoding="utf-8", newline="").read()
                for n in sorted(os.listdir(path)) if n.endswith(".txt")}
    names = subprocess.run(["git", "-C", repo, "ls-tree", "--name-only", "HEAD", f"test/{folder}/"],
                           check=True, capture_output=True, text=True).stdout.split()
    return {os.path.basename(n): subprocess.run(["git", "-C", repo, "show", f"HEAD:{n}"], check=True,
                                                capture_output=True).stdout.decode("utf-8")
            for n in names if n.endswith(".txt")}


def norm(text):
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    return "\n".join(l.rstrip() for l in lines)


def new_text(binary, body):
    msg = MIMEText(body.replace("\r\n", "\n"), "plain", "utf-8")
    msg["From"] = "Some One <someone@example.org>"
    msg["To"] = "pmo@example.go.jp"
    msg["Subject"] = "Re: status"
    msg["Message-ID"] = "<peer@example.org>"
    with tempfile.NamedTemporaryFile(suffix=".eml", delete=False) as f:
        f.write(msg.as_bytes())
    try:
        out = subprocess.run([binary, "inbound", "explain", f.name], check=True,
                             capture_output=True).stdout
    finally:
        os.unlink(f.name)
    return json.loads(out)["new_text"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"),
                                                  "release", "pmoflow"))
    ap.add_argument("-v", "--verbose", action="store_true", help="list the cases that differ")
    ap.add_argument("--diff", help="show expected and actual for one case (name without .txt)")
    args = ap.parse_args()
    emails, trimmed = peer_files(args.repo, "emails"), peer_files(args.repo, "trimmed")
    matched, differ = 0, []
    for name, body in emails.items():
        got, want = norm(new_text(args.bin, body)), norm(trimmed[name])
        case = name[:-4]
        if got == want:
            matched += 1
        else:
            differ.append(case)
        if args.diff == case:
            print(f"--- expected\n{want}\n--- pmoflow\n{got}\n---")
    if args.verbose:
        for case in differ:
            print(f"differs: {case}")
    print(f"email_reply_trimmer: {matched} of {len(emails)} cases match")


if __name__ == "__main__":
    sys.exit(main())
