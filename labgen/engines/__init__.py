"""Engines behind one interface (base.Engine): 'local' (in-process, loopback) and 'docker'."""

from __future__ import annotations

from ..errors import InfraError


def docker_answers() -> tuple[bool, str]:
    try:
        import docker
        client = docker.from_env(timeout=5)
        client.ping()
        return True, "a Docker engine answers"
    except Exception as e:  # no socket, permission, daemon down: all mean "not here"
        return False, f"no Docker engine answers ({str(e).splitlines()[0][:80]})"


def select(name: str):
    """Returns (engine, why)."""
    if name == "local":
        from .local import LocalEngine
        return LocalEngine(), "asked for"
    if name == "docker":
        ok, why = docker_answers()
        if not ok:
            raise InfraError(f"the docker engine cannot run: {why}; start Docker or use --engine local")
        from .docker import DockerEngine
        return DockerEngine(), "asked for"
    ok, why = docker_answers()
    if ok:
        from .docker import DockerEngine
        return DockerEngine(), why
    from .local import LocalEngine
    return LocalEngine(), why + "; using the local engine"
