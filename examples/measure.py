#!/usr/bin/env python3
"""Restart from scratch vs resume by forkmon, for one of the examples.

    sudo python3 examples/measure.py python-slow-start
    sudo python3 examples/measure.py pytest-loop
    sudo python3 examples/measure.py python-numpy --python target/pyenv/bin/python

Restart: the example's command run from scratch, from its start to the
line it prints after the edited module ran (10 runs). Resume: under
`forkmon run --restart-delay 0`, from an editor-style save (a new file
renamed over the module) to that line (12 saves). Medians, with min and
max. Python's ordinary settings (bytecode caches on, output buffered);
caches exist from a first run, as after any earlier one. The example is
copied to a scratch directory: the checkout is not touched.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# example: (command after the interpreter, file to edit, its versions, line)
EXAMPLES = {
    "python-slow-start": (
        ["app.py"],
        "handlers.py",
        lambda i: f'def greet(name):\n    return f"hello {i}, {{name}}!"\n',
        lambda i: f"hello {i}, world!",
    ),
    "pytest-loop": (
        ["-m", "pytest", "-q", "tests/test_catalog.py"],
        "tests/test_catalog.py",
        lambda i: open(os.path.join(ROOT, "examples/pytest-loop/tests/test_catalog.py")).read()
        + f"\n\ndef test_n{i}():\n    assert {i} == {i}\n",
        lambda i: "3 passed",
    ),
    "python-numpy": (
        ["app.py"],
        "model.py",
        lambda i: "import numpy\n\nWEIGHTS = numpy.full((200, 200), "
        f"{i + 1}.0)\n\n\ndef predict():\n    return float((WEIGHTS @ WEIGHTS).sum())\n",
        lambda i: f"prediction: {float(200 ** 3 * (i + 1) ** 2)}",
    ),
}


def until(lines, wanted):
    for line in lines:
        if wanted in line:
            return
    raise SystemExit(f"the program ended without printing {wanted!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("example", choices=sorted(EXAMPLES))
    parser.add_argument("--python", default="python3")
    parser.add_argument("--forkmon", default=os.path.join(ROOT, "target/release/forkmon"))
    args = parser.parse_args()
    command, edited, version, line = EXAMPLES[args.example]
    # Run from a scratch directory: a path given relative to here is made
    # absolute (a bare name is looked up in PATH).
    python = os.path.abspath(args.python) if os.sep in args.python else args.python
    command = [python] + command
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")}
    with tempfile.TemporaryDirectory() as scratch:
        d = os.path.join(scratch, args.example)
        shutil.copytree(os.path.join(ROOT, "examples", args.example), d)
        os.chmod(scratch, 0o755)
        for root, dirs, _ in os.walk(d):
            os.chmod(root, 0o755)

        def save(i):
            path = os.path.join(d, edited)
            with open(path + ".swp", "w") as f:
                f.write(version(i))
            os.rename(path + ".swp", path)

        save(0)
        subprocess.run(command, cwd=d, env=env, capture_output=True, check=True)
        restart = []
        for _ in range(10):
            started = time.perf_counter()
            program = subprocess.Popen(command, cwd=d, env=env, stdout=subprocess.PIPE, text=True)
            until(program.stdout, line(0))
            restart.append(time.perf_counter() - started)
            program.wait()
        forkmon = subprocess.Popen(
            [args.forkmon, "run", "--restart-delay", "0", "--"] + command,
            cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1)
        until(forkmon.stdout, line(0))
        time.sleep(1)
        resume = []
        for i in range(1, 13):
            started = time.perf_counter()
            save(i)
            until(forkmon.stdout, line(i))
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
