"""Wall time of `labgen up broken --engine local` to its verdict (target: median ≤ 0.5 s), against
the named baseline `labgen --version` (the interpreter and CLI start-up every command pays),
measured alternately in the same run."""

from __future__ import annotations

import argparse
import statistics
import tempfile

from common import LABGEN_SCRIPT, alternate, machine, run_timed

TARGET_S = 0.5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    a = ap.parse_args()
    up = LABGEN_SCRIPT + ["up", "broken", "--engine", "local", "--json"]
    with tempfile.TemporaryDirectory() as wd:
        run_timed(up, wd)  # warm: the lab's PKI is made once, as on a user's second run
        samples = alternate(
            {"up": lambda: run_timed(up, wd), "version": lambda: run_timed(LABGEN_SCRIPT + ["--version"], wd)}, a.runs
        )
    med, base = statistics.median(samples["up"]), statistics.median(samples["version"])
    print(f"machine: {machine()}")
    print(
        f"labgen up broken --engine local: median {med:.3f} s over {a.runs} runs {[round(x, 3) for x in samples['up']]}"
    )
    print(
        f"baseline labgen --version:       median {base:.3f} s over {a.runs} runs "
        f"{[round(x, 3) for x in samples['version']]}"
    )
    print(
        f"ratio up/baseline: {med / base:.2f}   target median ≤ {TARGET_S} s: {'met' if med <= TARGET_S else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
