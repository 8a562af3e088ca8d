"""A small SMTP server that misbehaves on purpose, one behaviour per connection, for the fault
tests: python3 faulty_smtp.py PORT MAILDIR SCRIPT, where SCRIPT is a comma-separated list of
behaviours, taken one after the other (the last one repeats): `421` and `hang` when a connection
opens, the others at each MAIL FROM (a client may send several transactions on one connection):

  ok      accept everything; the message is stored in MAILDIR
  421     greet with 421 and close
  451     451 to RCPT TO
  452     452 after the end of DATA
  550     550 to RCPT TO
  554     554 after the end of DATA
  hang    accept the connection and never say anything
  drop    read the whole message (and store it, as a server that crashed after queueing it
          would have), then close without answering the final dot

Every behaviour taken is logged to MAILDIR/../faulty_smtp.log as `N BEHAVIOUR [message-id]`.
"""

import asyncio
import os
import sys
import uuid

PORT, MAILDIR, SCRIPT = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
LOG = os.path.join(os.path.dirname(os.path.abspath(MAILDIR)), "faulty_smtp.log")
os.makedirs(MAILDIR, exist_ok=True)
taken = 0


def peek():
    return SCRIPT[min(taken, len(SCRIPT) - 1)]


def take():
    global taken
    how = peek()
    taken += 1
    return taken, how


def log(line):
    with open(LOG, "a") as f:
        f.write(line + "\n")


def message_id(data):
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode(errors="replace")
        if line == b"":
            break
    return "-"


async def session(reader, writer):
    n, how = (take() if peek() in ("421", "hang") else (0, "ok"))

    async def say(text):
        writer.write((text + "\r\n").encode())
        await writer.drain()

    try:
        if how == "hang":
            log(f"{n} hang")
            await asyncio.sleep(3600)
            return
        if how == "421":
            log(f"{n} 421")
            await say("421 4.3.2 Service not available, closing channel")
            return
        await say("220 faulty.example ESMTP")
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line.decode(errors="replace").strip().split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                await say("250-faulty.example\r\n250-8BITMIME\r\n250 SMTPUTF8")
            elif verb == "MAIL":
                n, how = take()
                await say("250 2.1.0 OK")
            elif verb == "RCPT":
                if how == "451":
                    log(f"{n} 451")
                    await say("451 4.3.0 Temporary lookup failure, try again later")
                elif how == "550":
                    log(f"{n} 550")
                    await say("550 5.1.1 User unknown")
                else:
                    await say("250 2.1.5 OK")
            elif verb == "DATA":
                await say("354 End data with <CR><LF>.<CR><LF>")
                data = b""
                while True:
                    chunk = await reader.readline()
                    if not chunk:
                        return
                    if chunk == b".\r\n":
                        break
                    data += chunk
                mid = message_id(data)
                if how in ("ok", "drop"):
                    with open(os.path.join(MAILDIR, uuid.uuid4().hex + ".eml"), "wb") as f:
                        f.write(data)
                log(f"{n} {how} {mid}")
                if how == "drop":
                    writer.close()
                    return
                if how == "452":
                    await say("452 4.3.1 Insufficient system storage")
                elif how == "554":
                    await say("554 5.7.1 Message rejected as spam")
                else:
                    await say("250 2.0.0 Queued")
            elif verb == "RSET" or verb == "NOOP":
                await say("250 2.0.0 OK")
            elif verb == "QUIT":
                await say("221 2.0.0 Bye")
                return
            else:
                await say("502 5.5.2 Command not recognized")
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    server = await asyncio.start_server(session, "127.0.0.1", PORT)
    # Readiness without a probe connection (a probe would take a behaviour).
    open(LOG + ".ready", "w").close()
    async with server:
        await server.serve_forever()


asyncio.run(main())
