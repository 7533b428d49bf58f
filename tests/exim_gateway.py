"""The tests' non-Postfix gateway: Exim from Debian as a Docker image, built offline the way
labgen builds its lab image (labgen/engines/images.py): a trixie rootfs made with mmdebstrap from
the host's Debian mirror, `docker import`ed. No registry, no Dockerfile, nothing of labgen inside:
the image knows only labgen's gateway-image contract (docs/gateway-image.md).

Its tag is a content hash of what goes into it (tests/gateways/exim/packages.txt and start.sh, the
Debian suite), so a CI machine that built it once reuses it. The Exim configurations are not in
the image: each scenario mounts its own (tests/gateways/exim/broken, .../fixed).

Build it by hand: `.venv/bin/python tests/exim_gateway.py` (prints the tag)."""

from __future__ import annotations

import fcntl
import hashlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent / "gateways" / "exim"
REPO = "labgen-test-exim"
LABEL = "io.labgen.test-image"  # not io.labgen.image: `labgen images` lists and prunes only its own
START = "/usr/local/sbin/exim-gateway-start"
_RECIPE = 1  # bump when the build steps below change what the image holds


def _packages() -> list[str]:
    text = (HERE / "packages.txt").read_text()
    return [w for line in text.splitlines() for w in line.split("#", 1)[0].split()]


def image_tag() -> str:
    from labgen.engines.images import SUITE

    h = hashlib.sha256()
    for part in (
        str(_RECIPE).encode(),
        SUITE.encode(),
        " ".join(_packages()).encode(),
        (HERE / "start.sh").read_bytes(),
    ):
        h.update(len(part).to_bytes(8, "big") + part)
    return f"{REPO}:{h.hexdigest()[:12]}"


def _has(client, ref: str) -> bool:
    import docker.errors

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_exim_image() -> str:
    """The image's tag, built first when the engine lacks it (one build at a time per host)."""
    from labgen.engines.dockerapi import client as docker_client
    from labgen.engines.images import SUITE, _cache_home, debian_sources

    tag = image_tag()
    client = docker_client()
    if _has(client, tag):
        return tag
    lock_path = _cache_home() / "exim-test-image.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process's build: then it is there
        if _has(client, tag):
            return tag
        if shutil.which("mmdebstrap") is None:
            raise RuntimeError("building the Exim test gateway needs mmdebstrap (apt-get install mmdebstrap)")
        with tempfile.TemporaryDirectory(prefix="labgen-exim-") as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            cmd = [
                "mmdebstrap",
                "--variant=apt",
                "--include=" + ",".join(_packages()),
                f"--customize-hook=upload {shlex.quote(str(HERE / 'start.sh'))} {START}",
                f'--customize-hook=chroot "$1" chmod 0755 {START}',
                # exim4-config's own generated configuration is never used: each lab mounts one.
                '--customize-hook=chroot "$1" sh -c "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin"',
                SUITE,
                str(rootfs),
                *debian_sources(),
            ]
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
            if p.returncode != 0:
                tail = (p.stdout + p.stderr).strip().splitlines()[-15:]
                raise RuntimeError("mmdebstrap (Exim test gateway) failed:\n" + "\n".join(tail))
            repo, _, version = tag.partition(":")
            client.api.import_image_from_file(
                str(rootfs),
                repository=repo,
                tag=version,
                changes=[
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    f'CMD ["{START}"]',
                    "EXPOSE 25",
                    f"LABEL {LABEL}=exim-gateway",
                ],
            )
    if not _has(client, tag):
        raise RuntimeError(f"{tag} is missing after docker import")
    client.images.get(tag).tag(REPO, "latest")  # what tests/gateways/exim/*.yaml name, for a run by hand
    return tag


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent.parent))
    print(ensure_exim_image())
