"""A real HTTP receiver for delivery reports.

usage: receiver.py FD OUTDIR [CERT KEY]

FD is a bound loopback TCP socket inherited from the test (see
upstream.py).

With CERT and KEY (PEM files) it serves HTTPS.

Each POST is stored as OUTDIR/<n>.body with OUTDIR/<n>.type (its
Content-Type) and answered 200.
"""
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

fd, outdir = int(sys.argv[1]), sys.argv[2]
os.makedirs(outdir, exist_ok=True)
count = [0]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        count[0] += 1
        base = os.path.join(outdir, str(count[0]))
        with open(base + ".type", "w") as f:
            f.write(self.headers.get("Content-Type", ""))
        with open(base + ".body.tmp", "wb") as f:
            f.write(body)
        os.rename(base + ".body.tmp", base + ".body")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=fd)
server.server_address = server.socket.getsockname()
server.server_activate()
if len(sys.argv) == 5:
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
