"""Small helpers shared by the benchmarks: time a command several times, take the median."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

# Commands run as on a user's machine: pip compiles labgen's bytecode when it installs a wheel, so
# a PYTHONDONTWRITEBYTECODE in the benchmarking shell (some sandboxes set it) would time
# compiling labgen from source on every run instead. The package is compiled once, up front.
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _precompile() -> None:
    import compileall

    import labgen

    compileall.compile_dir(os.path.dirname(labgen.__file__), quiet=1)


_precompile()

LABGEN = [sys.executable, "-m", "labgen.cli"]
# The console script users run (its start-up includes the entry point's own imports).
LABGEN_SCRIPT = [os.path.join(os.path.dirname(sys.executable), "labgen")]


def run_timed(cmd: list[str], cwd: str, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**USER_ENV, **(env or {})})
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"benchmark command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return dt


def run_lines(cmd: list[str], cwd: str, env: dict[str, str] | None = None) -> tuple[float, list[tuple[float, str]]]:
    """Wall time, and each stderr line with the seconds since the start at which it arrived (the
    phases of a command that logs its steps, e.g. with -v)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**USER_ENV, **(env or {})}
    )
    assert p.stderr is not None
    lines = [(time.perf_counter() - t0, line.rstrip("\n")) for line in p.stderr]
    code = p.wait()
    dt = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(
            f"benchmark command failed ({code}): {' '.join(cmd)}\n" + "\n".join(text for _, text in lines[-20:])
        )
    return dt, lines


def median_of(fn: Callable[[], float], runs: int) -> tuple[float, list[float]]:
    samples = [fn() for _ in range(runs)]
    return statistics.median(samples), samples


def alternate(fns: dict[str, Callable[[], float]], runs: int) -> dict[str, list[float]]:
    """Each function once per round, in turn, for `runs` rounds: a noisy machine's slow spells
    fall on all of them alike, so their ratio holds even when the absolute figures drift."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            samples[name].append(fn())
    return samples


def machine() -> str:
    return f"{platform.node()} · {os.cpu_count()} cores · Python {sys.version.split()[0]} · {platform.platform()}"
