"""A real next hop for the delivery tests, on aiosmtpd.

usage: upstream.py FD OUTDIR [CERT KEY USER PASSWORD [implicit]]

FD is a bound loopback TCP socket inherited from the test, which listens
on it: the port was the test's from the start, so no other test can take
it in between.

With CERT KEY USER PASSWORD, STARTTLS (CERT/KEY as PEM files) and then
AUTH as USER/PASSWORD are required; with `implicit` as well, the port
speaks TLS from the first byte (SMTPS) and then requires AUTH.

Stores each message as OUTDIR/<n>.eml with OUTDIR/<n>.json (envelope).
RCPT behaviour by local part: reject* -> 550 5.1.1; defer* -> 451 4.3.0 the
first time that address is seen, then 250; always-defer* -> 451 4.3.0 every
time; anything else -> 250.
"""
import asyncio
import json
import os
import ssl
import sys

import socket

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Handler:
    def __init__(self, outdir):
        self.outdir = outdir
        self.seen = {}
        self.n = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local.startswith("reject"):
            return "550 5.1.1 No such user here"
        if local.startswith("always-defer"):
            return "451 4.3.0 Still greylisted"
        if local.startswith("defer"):
            self.seen[address] = self.seen.get(address, 0) + 1
            if self.seen[address] == 1:
                return "451 4.3.0 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        base = os.path.join(self.outdir, str(self.n))
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".json", "w") as f:
            tls = server.transport.get_extra_info("ssl_object") is not None
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos, "tls": tls}, f)
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 2.0.0 Ok: stored as upstream-%d" % self.n


def main():
    fd, outdir = int(sys.argv[1]), sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    smtp_kwargs, tls = {}, None
    if len(sys.argv) in (7, 8):
        cert, key, user, password = sys.argv[3:7]
        implicit = sys.argv[7:] == ["implicit"]
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)

        def authenticator(server, session, envelope, mechanism, data):
            ok = isinstance(data, LoginPassword) and data.login == user.encode() and data.password == password.encode()
            return AuthResult(success=ok)

        if implicit:
            # aiosmtpd's auth_require_tls only knows STARTTLS; the whole
            # connection is TLS here.
            tls = ctx
            smtp_kwargs = dict(authenticator=authenticator, auth_required=True, auth_require_tls=False)
        else:
            smtp_kwargs = dict(tls_context=ctx, require_starttls=True, authenticator=authenticator, auth_required=True, auth_require_tls=True)
    sock = socket.socket(fileno=fd)
    sock.listen(64)
    sock.setblocking(False)
    handler = Handler(outdir)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # What aiosmtpd's Controller does, on the inherited socket.
    factory = lambda: SMTP(handler, hostname="upstream.test", enable_SMTPUTF8=True, loop=loop, **smtp_kwargs)
    loop.run_until_complete(loop.create_server(factory, sock=sock, ssl=tls))
    print("ready", flush=True)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
