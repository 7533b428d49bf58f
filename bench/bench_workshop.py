"""Workshop density (issue #11): `labgen workshop up broken --seats N` on the Docker engine, wall
time until every seat has given its verdict (the command returns then), each seat's verdict
checked (the exercise's starting state: to-fabrikam silently discarded, the rest delivered), then
the memory at rest of every seat (cgroup memory of its containers, `docker stats`, 20 s after
the last verdict), against a one-seat workshop measured the same way in the same run. Workshops
are the benchmark's own (a unique name), removed by label at the end."""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import subprocess
import tempfile
import time

from common import LABGEN, machine

_UNITS = {"B": 1 / 2**20, "KiB": 1 / 1024, "kB": 1 / 1024, "MiB": 1.0, "MB": 1.0, "GiB": 1024.0, "GB": 1024.0}


def mib(usage: str) -> float:
    m = re.match(r"([\d.]+)\s*([A-Za-z]+)", usage.split("/")[0].strip())
    if not m:
        raise ValueError(f"unreadable docker stats figure {usage!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def seat_memory(workshop: str) -> dict[str, float]:
    """MiB of cgroup memory per seat, summed over its containers."""
    names = subprocess.run(
        ["docker", "ps", "--filter", f"label=io.labgen.workshop={workshop}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    out = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *names],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seats: dict[str, float] = {}
    for line in out.splitlines():
        name, usage = line.split(" ", 1)
        seat = re.search(r"-(s\d\d)-", name)
        if seat:
            seats[seat.group(1)] = seats.get(seat.group(1), 0.0) + mib(usage)
    return seats


def one(seats: int, rest_s: float) -> tuple[float, dict[str, float]]:
    name = f"bench-ws-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            t0 = time.monotonic()
            p = subprocess.run(
                [*LABGEN, "workshop", "up", "broken", "--seats", str(seats), "--name", name, "--workdir", tmp],
                capture_output=True,
                text=True,
            )
            wall = time.monotonic() - t0
            if p.returncode != 0:
                raise SystemExit(f"workshop up failed ({p.returncode}): {p.stdout[-800:]} {p.stderr[-800:]}")
            status = json.loads(
                subprocess.run(
                    [*LABGEN, "workshop", "status", name, "--json"], capture_output=True, text=True, check=True
                ).stdout
            )
            wrong = [r["seat"] for r in status["seats"] if "to-fabrikam silently_discarded" not in r["verdict"]]
            if len(status["seats"]) != seats or wrong:
                raise SystemExit(f"wrong verdicts: seats {wrong} of {len(status['seats'])}")
            time.sleep(rest_s)
            return wall, seat_memory(name)
        finally:
            subprocess.run([*LABGEN, "workshop", "down", name], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seats", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rest", type=float, default=20.0, help="seconds after the verdicts before memory is read")
    a = ap.parse_args()
    base_t, base_m, many_t, many_m = [], [], [], []
    for _ in range(a.runs):  # alternating: one seat, then N
        t, mem = one(1, a.rest)
        base_t.append(t)
        base_m.append(statistics.median(mem.values()))
        t, mem = one(a.seats, a.rest)
        many_t.append(t)
        many_m.append(statistics.median(mem.values()))
        one_seat = f"1 seat {base_t[-1]:.1f} s {base_m[-1]:.0f} MiB"
        print(f"run: {one_seat}; {a.seats} seats {t:.1f} s {many_m[-1]:.0f} MiB/seat")
    print(machine())
    spread = f"{min(many_t):.1f}-{max(many_t):.1f}"
    print(f"{a.seats} seats, all verdicts: median {statistics.median(many_t):.1f} s ({spread})")
    print(f"memory at rest per seat (cgroup, median over seats): median {statistics.median(many_m):.0f} MiB")
    print(f"1 seat, same run: {statistics.median(base_t):.1f} s, {statistics.median(base_m):.0f} MiB")
    print(f"ratio (time): {statistics.median(many_t) / statistics.median(base_t):.1f}")


if __name__ == "__main__":
    main()
