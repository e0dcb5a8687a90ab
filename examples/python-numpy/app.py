"""numpy first (its import starts OpenBLAS's thread pool), then the module
you are working on, which uses it.

    sudo forkmon -- python3 app.py      # then edit model.py
"""
import time

started = time.perf_counter()
import numpy  # noqa: E402,F401
import features  # noqa: E402,F401  (the rest of the start-up)

print(f"start-up: {time.perf_counter() - started:.2f} s", flush=True)

import model  # noqa: E402  (the module you edit)

print("prediction:", model.predict(), flush=True)
