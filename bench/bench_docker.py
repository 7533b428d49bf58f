"""The Docker lab's numbers, on a lab of the benchmark's own (a copy of `broken` under a unique name,
on a free /24 of 198.18.0.0/15: other labs on the host are never touched):
1. cold offline image build (`labgen -v images build --force --base offline`: a fresh mmdebstrap
   base, no layer cache; target ≤ 60 s), against its own mmdebstrap step (the named baseline,
   taken from the build's step log in the same run) and the figure recorded before;
2. `labgen up LAB --engine docker` to verdict with the image cached (target median ≤ 4 s), against
   the named baseline `labgen up LAB --engine local`, alternating in the same run, and where the
   time of the last Docker run went: container starts, each service's ready event, the traffic
   generator's start (once every service answers), injection, verdict;
3. the lab's memory at rest: the sum over its containers of every process's RSS (target ≤ 250 MB),
   with `docker stats`' cgroup figure beside it."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import re
import secrets
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from common import LABGEN_SCRIPT, alternate, machine, run_lines, run_timed

SERVICES = ("dns", "eop", "sink", "gateway", "traffic")
REPO = Path(__file__).resolve().parent.parent


def rss_mb(container: str) -> float:
    out = subprocess.run(
        ["docker", "exec", container, "ps", "-e", "-o", "rss=,comm="], capture_output=True, text=True, check=True
    ).stdout
    # Every process but the measuring `ps` itself.
    return sum(int(line.split()[0]) for line in out.splitlines() if line.split()[1:] != ["ps"]) / 1024


def cgroup_mb(container: str) -> float:
    out = (
        subprocess.run(
            ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.split("/")[0]
        .strip()
    )
    num, unit = float(out.rstrip("KMGiB")), out.lstrip("0123456789.")
    return num * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "kB": 1 / 1000, "MB": 1, "GB": 1000}.get(unit, 1)


def free_subnet() -> str:
    taken = []
    for line in subprocess.run(
        [
            "docker",
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
            *subprocess.run(
                ["docker", "network", "ls", "-q"], capture_output=True, text=True, check=True
            ).stdout.split(),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split():
        try:
            taken.append(ipaddress.ip_network(line, strict=False))
        except ValueError:
            continue
    for third in range(255, 0, -1):
        net = ipaddress.ip_network(f"198.19.{third}.0/24")
        if not any(net.overlaps(t) for t in taken if t.version == 4):
            return str(net)
    raise SystemExit("no free /24 in 198.19.0.0/16 for the benchmark's lab")


def own_lab(root: Path) -> tuple[str, Path]:
    data = yaml.safe_load((REPO / "labgen" / "scenarios" / "broken.yaml").read_text())
    data["name"] = f"bench-{secrets.token_hex(3)}"
    path = root / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data["name"], path


def _epoch(iso: str) -> float:
    # Docker's RFC 3339 with nanoseconds: keep microseconds
    m = re.match(r"(.*?T\d\d:\d\d:\d\d)(\.\d+)?Z", iso)
    assert m, iso
    frac = (m.group(2) or ".0")[:7]
    return datetime.datetime.fromisoformat(m.group(1) + frac).replace(tzinfo=datetime.UTC).timestamp()


def breakdown(lab: str, labdir: Path, start: float) -> list[tuple[float, str]]:
    """(seconds since the command started, what) for one finished Docker run."""
    marks = []
    for svc in SERVICES:
        state = json.loads(
            subprocess.run(
                ["docker", "inspect", "--format", "{{json .State}}", f"labgen-{lab}-{svc}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        marks.append((_epoch(state["StartedAt"]) - start, f"container {svc} started"))
    wanted = {
        "ready": "ready",
        "start": "traffic generator starts sending (every service answered)",
        "injected": "traffic injected",
    }
    for f in sorted((labdir / "run").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            e = json.loads(line)
            if e.get("event") in wanted:
                what = f"{e['service']} {wanted[e['event']]}" if e["event"] == "ready" else wanted[e["event"]]
                marks.append((e["ts"] - start, what))
    log = labdir / "run" / "postfix.log"
    for line in log.read_text().splitlines() if log.is_file() else []:
        if "daemon started" in line:  # syslog time: whole seconds only
            when = datetime.datetime.strptime(f"{datetime.date.today().year} {line[:15]}", "%Y %b %d %H:%M:%S")
            marks.append(
                (
                    when.replace(tzinfo=datetime.UTC).timestamp() - start,
                    "gateway Postfix master started (whole seconds)",
                )
            )
            break
    return sorted(marks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold-runs", type=int, default=1, help="each rebuilds the base image (about a minute)")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    for _ in range(a.cold_runs):
        total, lines = run_lines(LABGEN_SCRIPT + ["-v", "images", "build", "--force", "--base", "offline"], ".")
        print(f"cold offline image build: {total:.1f} s   target ≤ 60 s: {'met' if total <= 60 else 'NOT met'}")
        begun: dict[str, float] = {}
        for at, text in lines:  # the build logs "TITLE ..." as a step starts and "✓ TITLE (Ns)" when done
            message = re.sub(r"^[A-Z]+ [\w.]+: ", "", text)  # -v's "LEVEL logger: " prefix
            done = re.fullmatch(r"✓ (.+) \(\d+s\)", message)
            if message.endswith(" ...") and not message.startswith("✓"):
                begun[message[:-4]] = at
            elif done and done.group(1) in begun:
                print(f"    step {done.group(1)}: {at - begun[done.group(1)]:.1f} s")
    with tempfile.TemporaryDirectory() as wd:
        lab, scenario = own_lab(Path(wd))
        subnet = free_subnet()
        up = ["up", str(scenario), "--json"]
        on_docker = up + ["--engine", "docker", "--subnet", subnet]
        try:
            run_timed(LABGEN_SCRIPT + on_docker, wd)  # image present, PKI made
            starts: list[float] = []

            def docker() -> float:
                starts.append(time.time())
                return run_timed(LABGEN_SCRIPT + on_docker, wd)

            samples = alternate(
                {"docker": docker, "local": lambda: run_timed(LABGEN_SCRIPT + up + ["--engine", "local"], wd)}, a.runs
            )
            md, ml = statistics.median(samples["docker"]), statistics.median(samples["local"])
            print(
                f"labgen up {lab} --engine docker (image cached): median {md:.2f} s "
                f"{[round(x, 2) for x in samples['docker']]}"
            )
            print(
                f"baseline labgen up {lab} --engine local:        median {ml:.2f} s "
                f"{[round(x, 2) for x in samples['local']]}"
            )
            print(f"ratio docker/local: {md / ml:.1f}   target docker median ≤ 4 s: {'met' if md <= 4 else 'NOT met'}")
            # The local runs share the lab directory; one more Docker run leaves its ledger there.
            starts.append(time.time())
            last = run_timed(LABGEN_SCRIPT + on_docker, wd)
            print(f"where the time of one Docker run went ({last:.2f} s in all), seconds since the command started:")
            for t, what in breakdown(lab, Path(wd) / f"labgen-{lab}", starts[-1]):
                print(f"  {t:6.2f}  {what}")
            time.sleep(10)  # at rest: traffic done, queues empty
            names = [f"labgen-{lab}-{s}" for s in SERVICES]
            rss = {n: rss_mb(n) for n in names}
            cg = {n: cgroup_mb(n) for n in names}
            print("lab memory at rest (MB): " + ", ".join(f"{n.rsplit('-', 1)[1]} {rss[n]:.1f}" for n in names))
            total = sum(rss.values())
            print(
                f"sum of container RSS: {total:.1f} MB (docker stats, cgroup incl. page cache: "
                f"{sum(cg.values()):.1f} MB)   target ≤ 250 MB: {'met' if total <= 250 else 'NOT met'}"
            )
        finally:
            subprocess.run(LABGEN_SCRIPT + ["down", lab], cwd=wd, capture_output=True)


if __name__ == "__main__":
    main()
