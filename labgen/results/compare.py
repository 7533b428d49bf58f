"""Compare two results message by message: what changed, and the attribution behind it."""

from __future__ import annotations

from .contracts import Change, CompareDoc, MessageResult, ResultAttribution, ResultDoc


def _attr(m: MessageResult | None) -> str:
    a = m.attribution if m else None
    if not a or not a.tenant:
        return "—"
    return f"{a.tenant} by {a.by}" + (f" ('{a.connector}')" if a.connector else "")


def _attribution(m: MessageResult | None) -> ResultAttribution | None:
    return m.attribution if m else None


def compare_docs(a: ResultDoc, b: ResultDoc) -> CompareDoc:
    index_a = {(m.id, m.to): m for m in a.messages}
    index_b = {(m.id, m.to): m for m in b.messages}
    changes = []
    for key in list(index_a) + [k for k in index_b if k not in index_a]:
        ma, mb = index_a.get(key), index_b.get(key)
        oa, ob = ma.outcome if ma else None, mb.outcome if mb else None
        changed = oa != ob
        if ma is None or mb is None:
            text = f"only in {a.scenario if mb is None else b.scenario}"
        elif changed:
            text = f"{oa} → {ob}"
            if _attr(ma) != _attr(mb):
                text += f"; EOP attribution {_attr(ma)} → {_attr(mb)}"
            text += f". {b.scenario}: {mb.why}"
        else:
            text = f"same ({oa})"
        changes.append(
            Change(
                id=key[0],
                to=key[1],
                a=oa,
                b=ob,
                changed=changed,
                attribution_a=_attribution(ma),
                attribution_b=_attribution(mb),
                change=text,
            )
        )
    return CompareDoc(a=a, b=b, changes=changes)
