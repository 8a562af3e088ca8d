"""An aiosmtpd handler that refuses every recipient permanently (550), for dead-letter tests:
python3 -m aiosmtpd -n -l 127.0.0.1:PORT -c reject_smtp.Reject (with tests/support on PYTHONPATH)."""


class Reject:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
