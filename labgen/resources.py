"""Where labgen's data lives: the data packages labgen.scenarios, labgen.templates, labgen.compose
and labgen.examples, found through importlib.resources. In a source checkout templates/, compose/
and examples/ sit at the top of the repository and pyproject.toml maps them into the package; an
editable install made before a mapping existed does not know that package yet, hence the
fallback to the checkout's layout."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

DATA_PACKAGES = ("scenarios", "templates", "compose", "examples", "exercises")
_CHECKOUT = Path(__file__).resolve().parent.parent


def resource_dir(name: str) -> Path:
    """The directory of data package labgen.<name>, as a real directory: Jinja's loader, the
    image's build context and the scenario reader work on files (a wheel is always unpacked)."""
    if name not in DATA_PACKAGES:
        raise ValueError(f"no labgen data package {name!r}")
    candidates: list[Path] = []
    try:
        found = importlib.resources.files(f"labgen.{name}")
    except ModuleNotFoundError:
        found = None
    if isinstance(found, Path):
        candidates.append(found)
    candidates.append(_CHECKOUT / name)
    for candidate in candidates:
        if candidate.is_dir() and any(p.name != "__init__.py" for p in candidate.iterdir()):
            return candidate
    raise FileNotFoundError(f"labgen resource directory '{name}' is missing from this install")
