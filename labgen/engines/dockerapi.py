"""The one way labgen talks to the Docker Engine API (the docker package, imported lazily so the
local engine never needs it)."""

from __future__ import annotations

from functools import lru_cache

from ..errors import InfraError


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:160]


@lru_cache(maxsize=1)
def client():
    """A connected client, or InfraError (exit 3) saying why there is none."""
    import docker

    try:
        c = docker.from_env(timeout=60)
        c.ping()
        return c
    except Exception as e:  # DockerException, connection refused, permission denied...
        raise InfraError(f"no Docker engine answers ({_first_line(e)}); start Docker or use --engine local") from None


def answers() -> tuple[bool, str]:
    """Whether a Docker engine answers, and a few words why (for --engine auto)."""
    try:
        client()
        return True, "a Docker engine answers"
    except InfraError as e:
        return False, e.message.split(";")[0]
