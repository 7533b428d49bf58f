"""Where packaged data lives: inside the wheel (labgen/templates, labgen/compose) or, in a
source checkout, at the top of the repository (templates/, compose/)."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """Directory for 'templates', 'compose' or 'scenarios'."""
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir() and any(p.name != "__init__.py" for p in candidate.iterdir()):
            return candidate
    raise FileNotFoundError(f"labgen resource directory '{name}' is missing from this install")
