"""Reading a labgen JSON document someone hands over (a result or compare file): bounded in
size, and anything that is not one is a single InputError line naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from ..errors import InputError, escape
from ..files import read_limited
from .contracts import CompareDoc, ResultDoc

MAX_JSON_BYTES = 64 << 20
Doc = TypeVar("Doc", ResultDoc, CompareDoc)


def read_json(path: Path, label: str) -> Any:
    raw = read_limited(path, label, MAX_JSON_BYTES, "a labgen result")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{label}: not JSON ({escape(e, 100)})") from None


def validated(model: type[Doc], data: Any, label: str) -> Doc:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        schema = "labgen.result/v1" if model is ResultDoc else "labgen.compare/v1"
        raise InputError(
            f"{label}: not a {schema} document ({escape(where, 60)}: {escape(first['msg'], 100)})"
        ) from None
