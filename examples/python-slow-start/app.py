"""A program with a slow start-up, as a web framework or a data tool has:
heavy imports and set-up, then the module you are working on.

    sudo forkmon -- python3 app.py      # then edit handlers.py
"""
import re
import time

started = time.perf_counter()

# The "framework": a good part of the standard library.
import argparse, asyncio, calendar, configparser, csv, ctypes, dbm  # noqa: E401,F401
import decimal, difflib, doctest, email.mime.multipart, fractions  # noqa: E401,F401
import ftplib, gettext, http.cookiejar, http.server, imaplib, json  # noqa: E401,F401
import logging.handlers, multiprocessing.pool, pickletools, pprint  # noqa: E401,F401
import pydoc, shelve, smtplib, sqlite3, ssl, statistics, tarfile  # noqa: E401,F401
import tomllib, unittest, urllib.request, uuid, wsgiref.simple_server  # noqa: E401,F401
import xml.dom.minidom, xmlrpc.server, zipfile  # noqa: E401,F401

# Its own set-up: routes compiled once at start, as frameworks do.
ROUTES = [re.compile(rf"^/item/{i}/(?P<name>\w+)/(?P<page>\d+)$") for i in range(15000)]

print(f"start-up: {time.perf_counter() - started:.2f} s", flush=True)

import handlers  # noqa: E402  (the module you edit)

print(handlers.greet("world"), flush=True)
