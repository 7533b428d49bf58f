"""CLI start-up: wall time of `labgen --version` and `labgen --help` through the console script
(target: median ≤ 0.15 s each), against the named baseline `python -c pass` with the same
interpreter, measured alternately in the same run. What start-up may import is held by
tests/test_wheel.py (no rich, pydantic, docker... before a command runs)."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

from common import LABGEN_SCRIPT, alternate, machine, run_timed

TARGET_S = 0.15


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=21)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as wd:
        samples = alternate(
            {
                "python -c pass": lambda: run_timed([sys.executable, "-c", "pass"], wd),
                "labgen --version": lambda: run_timed(LABGEN_SCRIPT + ["--version"], wd),
                "labgen --help": lambda: run_timed(LABGEN_SCRIPT + ["--help"], wd),
            },
            a.runs,
        )
    print(f"machine: {machine()}")
    base = statistics.median(samples["python -c pass"])
    for name, xs in samples.items():
        med = statistics.median(xs)
        verdict = (
            ""
            if name.startswith("python")
            else f"   ratio {med / base:.1f}×   target ≤ {TARGET_S} s: {'met' if med <= TARGET_S else 'NOT met'}"
        )
        print(
            f"{name:<17} median {med * 1000:6.1f} ms over {a.runs} runs (min {min(xs) * 1000:.1f}, "
            f"max {max(xs) * 1000:.1f}){verdict}"
        )


if __name__ == "__main__":
    main()
