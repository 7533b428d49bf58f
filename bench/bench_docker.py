"""The Docker lab's numbers:
1. cold offline image build (`labgen images build --force`: a fresh mmdebstrap base, fresh wheels,
   no layer cache), median of --cold-runs;
2. `labgen up broken --engine docker` to verdict with the image cached (target median ≤ 20 s),
   against the named baseline `labgen up broken --engine local`, alternating in the same run;
3. the lab's memory at rest: the sum over its containers of every process's RSS (target ≤ 250 MB),
   with `docker stats`' cgroup figure beside it."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time

from common import LABGEN, machine, median_of, run_timed


def rss_mb(container: str) -> float:
    out = subprocess.run(["docker", "exec", container, "ps", "-e", "-o", "rss=,comm="], capture_output=True,
                         text=True, check=True).stdout
    # Every process but the measuring `ps` itself.
    return sum(int(line.split()[0]) for line in out.splitlines() if line.split()[1:] != ["ps"]) / 1024


def cgroup_mb(container: str) -> float:
    out = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container],
                         capture_output=True, text=True, check=True).stdout.split("/")[0].strip()
    num, unit = float(out.rstrip("KMGiB")), out.lstrip("0123456789.")
    return num * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "kB": 1 / 1000, "MB": 1, "GB": 1000}.get(unit, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold-runs", type=int, default=3)
    a = ap.parse_args()
    print(f"machine: {machine()}")
    if a.cold_runs:
        def cold():
            with tempfile.TemporaryDirectory() as cache:
                return run_timed(LABGEN + ["images", "build", "--force"], ".", env={"XDG_CACHE_HOME": cache})
        med, xs = median_of(cold, a.cold_runs)
        print(f"cold offline image build: median {med:.1f} s over {a.cold_runs} runs {[round(x, 1) for x in xs]}")
    with tempfile.TemporaryDirectory() as wd:
        run_timed(LABGEN + ["up", "broken", "--engine", "docker", "--json"], wd)  # image present, PKI made
        docker, local = [], []
        for _ in range(a.runs):
            docker.append(run_timed(LABGEN + ["up", "broken", "--engine", "docker", "--json"], wd))
            local.append(run_timed(LABGEN + ["up", "broken", "--engine", "local", "--json"], wd))
        md, ml = statistics.median(docker), statistics.median(local)
        print(f"labgen up broken --engine docker (image cached): median {md:.2f} s {[round(x, 2) for x in docker]}")
        print(f"baseline labgen up broken --engine local:        median {ml:.2f} s {[round(x, 2) for x in local]}")
        print(f"ratio docker/local: {md / ml:.1f}   target docker median ≤ 20 s: {'met' if md <= 20 else 'NOT met'}")
        time.sleep(10)  # at rest: traffic done, queues empty
        names = [f"labgen-broken-{s}" for s in ("dns", "eop", "sink", "gateway", "traffic")]
        rss = {n: rss_mb(n) for n in names}
        cg = {n: cgroup_mb(n) for n in names}
        print("lab memory at rest (MB): " + ", ".join(f"{n.rsplit('-', 1)[1]} {rss[n]:.1f}" for n in names))
        total = sum(rss.values())
        print(f"sum of container RSS: {total:.1f} MB (docker stats, cgroup incl. page cache: {sum(cg.values()):.1f} MB)"
              f"   target ≤ 250 MB: {'met' if total <= 250 else 'NOT met'}")
        subprocess.run(LABGEN + ["down", "broken"], cwd=wd, capture_output=True)


if __name__ == "__main__":
    main()
