"""Seat reset and check (issue #11: "back to the exercise's starting state in seconds, without
rebuilding anything"): one seat of `broken` per topology, then, alternating between a pod seat
(the design) and a network seat (the baseline, five containers), `labgen check --seat s01` (the
trainee's overlay applied: the seat restarted from its image, the traffic sent again, the goals
graded; it fails, as the exercise starts) and `labgen workshop reset s01` (the overlay emptied,
the seat restarted), each timed as the trainee waits for it. Every check must grade the seat as
failing and every reset must give the starting verdict, or the run stops. Workshops are the
benchmark's own (a unique name), removed by label at the end."""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import tempfile
import time

from common import LABGEN, machine


def timed(cmd: list[str], cwd: str, want: int) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != want:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}, not {want}: {p.stdout[-600:]} {p.stderr[-600:]}")
    if cmd[2:4] == ["workshop", "reset"] and "to-fabrikam silently_discarded" not in p.stdout:
        raise SystemExit(f"reset did not give the starting verdict: {p.stdout[-600:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    names = {t: f"bench-rs-{t[:3]}-{secrets.token_hex(2)}" for t in ("pod", "network")}
    times: dict[str, dict[str, list[float]]] = {t: {"check": [], "reset": []} for t in names}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for topology, name in names.items():
                up = [*LABGEN, "workshop", "up", "broken", "--seats", "1", "--name", name, "--topology", topology]
                timed(up, tmp, 0)
            for _ in range(a.runs):
                for topology, name in names.items():  # alternating: the design, then the baseline
                    times[topology]["check"].append(timed([*LABGEN, "check", "--seat", "s01", name], tmp, 1))
                    reset = [*LABGEN, "workshop", "reset", "s01", "--name", name]
                    times[topology]["reset"].append(timed(reset, tmp, 0))
                last = [f"{t} check {v['check'][-1]:.1f} s reset {v['reset'][-1]:.1f} s" for t, v in times.items()]
                print("run: " + "; ".join(last), flush=True)
        finally:
            for name in names.values():
                subprocess.run([*LABGEN, "workshop", "down", name], capture_output=True)
    print(machine())
    for what in ("check", "reset"):
        pod, net = (statistics.median(times[t][what]) for t in ("pod", "network"))
        print(f"{what}: pod median {pod:.1f} s, network (baseline) median {net:.1f} s, ratio {pod / net:.2f}")


if __name__ == "__main__":
    main()
