"""Compare two results message by message: what changed, and the attribution behind it."""

from __future__ import annotations

COMPARE_SCHEMA = "labgen.compare/v1"


def _attr(m: dict | None) -> str:
    a = (m or {}).get("attribution") or {}
    if not a.get("tenant"):
        return "—"
    return f"{a['tenant']} by {a['by']}" + (f" ('{a['connector']}')" if a.get("connector") else "")


def compare_docs(a: dict, b: dict) -> dict:
    index_a = {(m["id"], m["to"]): m for m in a["messages"]}
    index_b = {(m["id"], m["to"]): m for m in b["messages"]}
    changes = []
    for key in list(index_a) + [k for k in index_b if k not in index_a]:
        ma, mb = index_a.get(key), index_b.get(key)
        oa, ob = (ma or {}).get("outcome"), (mb or {}).get("outcome")
        changed = oa != ob
        if ma is None or mb is None:
            text = f"only in {a['scenario'] if mb is None else b['scenario']}"
        elif changed:
            text = f"{oa} → {ob}"
            if _attr(ma) != _attr(mb):
                text += f"; EOP attribution {_attr(ma)} → {_attr(mb)}"
            text += f". {b['scenario']}: {mb['why']}"
        else:
            text = f"same ({oa})"
        changes.append({"id": key[0], "to": key[1], "a": oa, "b": ob, "changed": changed,
                        "attribution_a": (ma or {}).get("attribution"), "attribution_b": (mb or {}).get("attribution"),
                        "change": text})
    return {"schema": COMPARE_SCHEMA, "a": a, "b": b, "changes": changes}
