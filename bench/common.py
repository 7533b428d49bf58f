"""Small helpers shared by the benchmarks: time a command several times, take the median."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time


def run_timed(cmd: list[str], cwd: str, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"benchmark command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return dt


def median_of(fn, runs: int) -> tuple[float, list[float]]:
    samples = [fn() for _ in range(runs)]
    return statistics.median(samples), samples


def machine() -> str:
    return f"{platform.node()} · {os.cpu_count()} cores · Python {sys.version.split()[0]} · {platform.platform()}"


LABGEN = [sys.executable, "-m", "labgen.cli"]
