"""Wall time of `labgen up broken --engine local` (target: median ≤ 1.5 s), against the named
baseline `labgen --version` (the interpreter and CLI start-up every command pays), measured
alternately in the same run."""

from __future__ import annotations

import argparse
import tempfile

from common import LABGEN, machine, median_of, run_timed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as wd:
        run_timed(LABGEN + ["up", "broken", "--engine", "local", "--json"], wd)  # warm: PKI made once
        up, ups = median_of(lambda: run_timed(LABGEN + ["up", "broken", "--engine", "local", "--json"], wd), a.runs)
        base, bases = median_of(lambda: run_timed(LABGEN + ["--version"], wd), a.runs)
    print(f"machine: {machine()}")
    print(f"labgen up broken --engine local: median {up:.3f} s over {a.runs} runs {[round(x, 3) for x in ups]}")
    print(f"baseline labgen --version:       median {base:.3f} s over {a.runs} runs {[round(x, 3) for x in bases]}")
    print(f"ratio up/baseline: {up / base:.2f}   target median ≤ 1.5 s: {'met' if up <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
