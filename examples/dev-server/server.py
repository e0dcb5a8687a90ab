"""A development HTTP server, as a web framework runs one: it binds its
listening socket, loads its (slow) framework, and only then imports the
module you edit, whose `respond` answers every request.

    cargo xtask run -- python3 examples/dev-server/server.py   # edit handler.py

Each save resumes the server from the import of handler.py: no start-up,
no `EADDRINUSE` (the socket was bound before the checkpoint, and the
checkpoint keeps it), and no refused connection while it resumes: the
kernel queues them on the listening socket, and the resumed server
accepts them.
"""
import http.server
import sys
import time

started = time.perf_counter()
port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000

# Bound before anything else, as a dev server does to say where it listens.
server = http.server.HTTPServer(("127.0.0.1", port), None)

# The "framework": a good part of the standard library, and routes
# compiled once at start.
import argparse, asyncio, calendar, configparser, csv, decimal, difflib  # noqa: E401,F401
import email.mime.multipart, json, logging.handlers, pydoc, sqlite3  # noqa: E401,F401
import ssl, tarfile, unittest, urllib.request, xml.dom.minidom, zipfile  # noqa: E401,F401
import re  # noqa: E402

ROUTES = [re.compile(rf"^/item/{i}/(?P<name>\w+)$") for i in range(10000)]

print(f"start-up: {time.perf_counter() - started:.2f} s", flush=True)
print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)

import handler  # noqa: E402  (the module you edit)

print(f"handler: {handler.respond('/')}", flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = handler.respond(self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # one line per request would drown forkmon's


server.RequestHandlerClass = Handler
server.serve_forever()
