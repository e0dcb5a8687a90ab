"""Shared set-up that takes a while (a reference data set built, a service
started): made once per session, before the test files are opened, so
that forkmon resumes the session right after it.

    sudo forkmon -- python3 -m pytest tests/test_catalog.py
    # edit tests/test_catalog.py: the tests run again, the set-up does not
"""
import hashlib
import time

import pytest

CATALOG = {}


def pytest_sessionstart(session):
    started = time.perf_counter()
    for i in range(1_000_000):
        CATALOG[f"item-{i}"] = hashlib.sha256(str(i).encode()).hexdigest()
    print(f"\nset-up: {time.perf_counter() - started:.2f} s", flush=True)


@pytest.fixture(scope="session")
def catalog():
    return CATALOG
