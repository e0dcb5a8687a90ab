#!/usr/bin/env python3
"""Restart from scratch vs resume by forkmon, for one of the examples.

    sudo python3 examples/measure.py python-slow-start
    sudo python3 examples/measure.py pytest-loop
    sudo python3 examples/measure.py python-numpy --python target/pyenv/bin/python
    sudo python3 examples/measure.py c-plugin      # also dev-server, tcc-run,
                                                   # perl, ruby, rust-config, lua

Restart: the example's command run from scratch, from its start to the
line it prints after the edited file was read (10 runs). Resume: under
`forkmon run --restart-delay 0`, from an editor-style save (a new file
renamed over the edited one; for c-plugin, a rebuilt plugin renamed over
the old one, timed from the rename) to that line (12 saves). For
dev-server the "line" is an HTTP answer from the new handler, asked for
again and again. Medians, with min and max. Python's ordinary settings
(bytecode caches on, output buffered); caches exist from a first run, as
after any earlier one. The example is copied to a scratch directory: the
checkout is not touched.
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 8765


def text_example(command, edited, old, new, options=(), build=()):
    """An example whose edited file is text: version i replaces `old` in
    it by `new` with i, and the program prints that line."""
    return {
        "command": command,
        "options": list(options),
        "build": list(build),
        "edited": edited,
        "version": lambda text, i: text.replace(old, f"{new} {i}"),
        "line": lambda i: f"{new} {i}",
    }


EXAMPLES = {
    "python-slow-start": {
        "command": ["PYTHON", "app.py"],
        "edited": "handlers.py",
        "version": lambda _, i: f'def greet(name):\n    return f"hello {i}, {{name}}!"\n',
        "line": lambda i: f"hello {i}, world!",
    },
    "pytest-loop": {
        "command": ["PYTHON", "-m", "pytest", "-q", "tests/test_catalog.py"],
        "edited": "tests/test_catalog.py",
        "version": lambda text, i: text + f"\n\ndef test_n{i}():\n    assert {i} == {i}\n",
        "line": lambda i: "3 passed",
    },
    "python-numpy": {
        "command": ["PYTHON", "app.py"],
        "edited": "model.py",
        "version": lambda _, i: "import numpy\n\nWEIGHTS = numpy.full((200, 200), "
        f"{i + 1}.0)\n\n\ndef predict():\n    return float((WEIGHTS @ WEIGHTS).sum())\n",
        "line": lambda i: f"prediction: {float(200 ** 3 * (i + 1) ** 2)}",
    },
    "c-plugin": {
        "command": ["./host"],
        "options": ["--filter", "libplugin.so"],
        "build": [["make"]],
        "edited": "plugin.c",
        "version": lambda text, i: text.replace("hello from the plugin", f"plugin {i}"),
        "line": lambda i: f"plugin: plugin {i},",
        # The new plugin is built beside, then renamed over the old one.
        "rebuild": ["cc", "-O2", "-shared", "-fPIC", "-o", "libplugin.so.new", "plugin.c"],
        "replaces": ("libplugin.so.new", "libplugin.so"),
    },
    "dev-server": {
        "command": ["PYTHON", "server.py", str(PORT)],
        "edited": "handler.py",
        "version": lambda text, i: text.replace("hello from the handler", f"version {i}"),
        "answer": lambda i: f"version {i}, you asked",
    },
    "tcc-run": text_example(
        ["tcc", "-run", "main.c"], "greeting.h", "hello from greeting.h", "greeting",
        options=["--filter", "greeting.h"]),
    "perl": text_example(["perl", "main.pl"], "greeting.pl", "hello from greeting.pl", "perl"),
    "ruby": text_example(["ruby", "main.rb"], "greeting.rb", "hello from greeting.rb", "ruby"),
    "rust-config": text_example(
        ["./rust-config", "config.toml"], "config.toml", "hello from config.toml", "config",
        options=["--filter", "config.toml"],
        build=[["rustc", "-O", "--edition", "2024", "-o", "rust-config", "main.rs"]]),
    "lua": text_example(["lua5.4", "main.lua"], "foo.lua", 'print("foo!")', "print('lua",
                        options=["--filter", "*.lua"]),
}
# lua prints what its print() call says.
EXAMPLES["lua"]["version"] = lambda _, i: f"print('lua {i}')\n"
EXAMPLES["lua"]["line"] = lambda i: f"lua {i}"


def until(lines, wanted):
    for line in lines:
        if wanted in line:
            return
    raise SystemExit(f"the program ended without printing {wanted!r}")


def ask(wanted, deadline=30):
    """Asks the dev server until it answers with `wanted`."""
    end = time.perf_counter() + deadline
    while time.perf_counter() < end:
        try:
            with socket.create_connection(("127.0.0.1", PORT), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            if wanted in answer.decode():
                return
        except OSError:
            pass
        time.sleep(0.0002)
    raise SystemExit(f"the server never answered {wanted!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("example", choices=sorted(EXAMPLES))
    parser.add_argument("--python", default="python3")
    parser.add_argument("--forkmon", default=os.path.join(ROOT, "target/release/forkmon"))
    args = parser.parse_args()
    example = EXAMPLES[args.example]
    # Run from a scratch directory: a path given relative to here is made
    # absolute (a bare name is looked up in PATH).
    python = os.path.abspath(args.python) if os.sep in args.python else args.python
    command = [python if word == "PYTHON" else word for word in example["command"]]
    edited = example["edited"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")}
    with tempfile.TemporaryDirectory() as scratch:
        d = os.path.join(scratch, args.example)
        shutil.copytree(os.path.join(ROOT, "examples", args.example), d)
        os.chmod(scratch, 0o755)
        for root, dirs, _ in os.walk(d):
            os.chmod(root, 0o755)
        for step in example.get("build", []):
            subprocess.run(step, cwd=d, check=True)
        original = open(os.path.join(d, edited)).read()

        def save(i):
            path = os.path.join(d, edited)
            with open(path + ".swp", "w") as f:
                f.write(example["version"](original, i))
            os.rename(path + ".swp", path)
            if "rebuild" in example:
                subprocess.run(example["rebuild"], cwd=d, check=True)
                new, old = example["replaces"]
                # Timed from here: the build is the compiler's time.
                started = time.perf_counter()
                os.rename(os.path.join(d, new), os.path.join(d, old))
                return started
            return None

        def wait(program, i):
            if "answer" in example:
                ask(example["answer"](i))
            else:
                until(program.stdout, example["line"](i))

        save(0)
        if "answer" not in example:
            subprocess.run(command, cwd=d, env=env, capture_output=True, check=True)
        restart = []
        for _ in range(10):
            started = time.perf_counter()
            program = subprocess.Popen(command, cwd=d, env=env, stdout=subprocess.PIPE, text=True)
            wait(program, 0)
            restart.append(time.perf_counter() - started)
            if "answer" in example:
                program.kill()
            program.wait()
        forkmon = subprocess.Popen(
            [args.forkmon, "run", "--restart-delay", "0"] + example.get("options", [])
            + ["--"] + command,
            cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1)
        wait(forkmon, 0)
        time.sleep(1)
        resume = []
        for i in range(1, 13):
            started = time.perf_counter()
            started = save(i) or started
            wait(forkmon, i)
            resume.append(time.perf_counter() - started)
            time.sleep(0.5)
        forkmon.terminate()
        forkmon.wait()

    def show(times):
        ms = [t * 1000 for t in times]
        return (f"median {statistics.median(ms):.1f} ms "
                f"(min {min(ms):.1f}, max {max(ms):.1f}, n={len(ms)})")

    print(f"{args.example}: restart from scratch {show(restart)}")
    print(f"{args.example}: resume (--restart-delay 0) {show(resume)}")


if __name__ == "__main__":
    main()
