"""`datacure review`: walk through flagged rows, worst first, and decide what happens to each.

For each (row, auditor) flag of the latest audit that has no review yet, most severe first, the
loop shows the row (text snippet or image path, given and suggested label, the flag's details and
any planned edit) and asks for a decision:

- `accept`: the flag is right, apply the fix. Pending edits that came from this flag become
  `accepted`: the row's own edits, and for set-valued auditors (`exact_duplicate`,
  `near_duplicate`, `leakage`) the edits of the set that name this row as the one kept or
  flagged. When no edit is planned yet, a label flag with a suggested label gets an accepted
  relabel to it, and an `outlier`, `contamination` or `null` flag gets an accepted drop; other
  auditors' flags (imbalance, drift, spurious, slices: findings, not row faults) are recorded
  only.
- `reject`: the flag is wrong. Its pending edits become `rejected`, and `datacure repair` plans
  no edit from this flag for this row again.
- `relabel`: set the row's label (asked for; the suggested label is the default). Pending
  relabels of the row are rejected and an accepted relabel edit is added.
- `skip`: decide later (nothing is stored; the row comes back next time). `quit` ends the loop.

Every decision is one row of `reviews(row_id, auditor, decision, new_label, decided_at, note)`,
written at once in its own transaction (quitting, or a killed terminal, keeps what was decided),
and it updates `edits`, so `datacure export` honours it without a new `repair`, and a later
`repair` keeps it (reviewed edits survive a re-plan; rejected flags plan nothing).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..store import schema as S
from ..store.errors import InputError
from .common import ACCEPTED, ADD, DROP, PENDING, REJECTED, RELABEL

ACCEPT, REJECT, RELABEL_DECISION, SKIP, QUIT = "accept", "reject", "relabel", "skip", "quit"
KEYS = {"a": ACCEPT, "r": REJECT, "l": RELABEL_DECISION, "s": SKIP, "q": QUIT}
# auditors whose flags name a set of rows; accepting one accepts the set's planned edits
SET_AUDITORS = ("exact_duplicate", "near_duplicate", "leakage")
# auditors whose accepted flag means "drop this row" when repair has planned nothing for it
DROP_ON_ACCEPT = ("outlier", "contamination", "null")
SNIPPET = 600
# rich markup: the key letter in bold (a bare "[a]" would be read as a style tag)
PROMPT = "[bold]a[/]ccept [bold]r[/]eject re[bold]l[/]abel [bold]s[/]kip [bold]q[/]uit > "


@dataclass
class ReviewReport:
    decisions: Counter = field(default_factory=Counter)
    shown: int = 0
    remaining: int = 0
    edits_changed: int = 0

    def summary(self) -> str:
        made = ", ".join(f"{k} {v}" for k, v in sorted(self.decisions.items())) or "none"
        return (
            f"reviewed {self.shown} flags: {made}; {self.edits_changed} edits updated; "
            f"{self.remaining} flags left to review"
        )


def pending_flags(store, auditor: str | None = None, top: int = 50, run_id: int | None = None):
    """Flags of the run (default: latest) without a review yet, most severe first (polars)."""
    run_id = run_id if run_id is not None else store.latest_run_id()
    if run_id is None:
        raise InputError(
            "the store has no audit run to review",
            f"run `datacure audit --db {store.path}` first",
        )
    if auditor is not None:
        known = [
            r[0]
            for r in store.fetchall(
                f"SELECT DISTINCT auditor FROM {S.ISSUES} WHERE run_id = ? ORDER BY 1", [run_id]
            )
        ]
        if auditor not in known:
            raise InputError(
                f"auditor {auditor!r} has no results in audit run {run_id}",
                f"choose one of: {', '.join(known) or '(none ran)'}",
            )
    text_col = store.text_column()
    cols = {c for c, _ in store.columns(S.SAMPLES)}
    content = "NULL"
    if text_col and text_col in cols:
        content = f"left(s.{S.quote(text_col)}::VARCHAR, {SNIPPET})"
    elif S.IMAGE_PATH in cols:
        content = f"s.{S.IMAGE_PATH}"
    where = "AND i.auditor = ?" if auditor else ""
    params = [run_id] + ([auditor] if auditor else [])
    limit = f"LIMIT {int(top)}" if top and top > 0 else ""
    return store.polars(
        f"""
        SELECT i.row_id, i.auditor, i.score, i.details::VARCHAR AS details, s.split,
               s.label::VARCHAR AS label, {content} AS content
        FROM {S.ISSUES} i JOIN {S.SAMPLES} s USING (row_id)
        WHERE i.run_id = ? AND i.is_issue {where}
          AND NOT EXISTS (SELECT 1 FROM {S.REVIEWS} r
                          WHERE r.row_id = i.row_id AND r.auditor = i.auditor)
        ORDER BY i.score, i.auditor, i.row_id {limit}
        """,
        params,
    )


def _suggestion(details: dict) -> tuple[str | None, float | None]:
    for key in ("suggested_label", "suggestion"):
        if details.get(key) is not None:
            prob = details.get("suggested_label_prob", details.get("suggested_prob"))
            return str(details[key]), prob
    return None, None


def _related_edits(store, row_id: int, auditor: str) -> list[tuple]:
    """Pending or reviewed edits that come from this flag (see module doc)."""
    extra = ""
    if auditor in SET_AUDITORS:
        extra = (
            " OR (auditor = ? AND (json_extract(details, '$.kept_row_id')::BIGINT = ? OR "
            "json_extract(details, '$.flagged_row_id')::BIGINT = ?))"
        )
    params = [row_id, auditor] + ([auditor, row_id, row_id] if extra else [])
    return store.fetchall(
        f"SELECT edit_id, row_id, action, new_label, status FROM {S.EDITS} "
        f"WHERE action != '{ADD}' AND ((row_id = ? AND auditor = ?){extra}) ORDER BY edit_id",
        params,
    )


def _new_edit(
    store,
    row_id: int,
    action: str,
    new_label: str | None,
    auditor: str,
    run_id: int | None,
    note: str,
) -> None:
    edit_id = int(store.scalar(f"SELECT coalesce(max(edit_id), 0) + 1 FROM {S.EDITS}"))
    store.execute(
        f"INSERT INTO {S.EDITS} VALUES (?, ?, ?, ?, ?, 'review', ?, '{ACCEPTED}', ?, now())",
        [
            edit_id,
            run_id,
            row_id,
            action,
            new_label,
            auditor,
            json.dumps({"review": True, "note": note}),
        ],
    )


def record_decision(
    store,
    row_id: int,
    auditor: str,
    decision: str,
    new_label: str | None = None,
    note: str = "",
    details: dict | None = None,
    given_label: str | None = None,
    run_id: int | None = None,
) -> int:
    """Store one decision in `reviews` and apply it to `edits` (one transaction).

    Returns how many edits were added or changed."""
    if decision not in (ACCEPT, REJECT, RELABEL_DECISION):
        raise InputError(f"unknown review decision {decision!r}", "use accept, reject or relabel")
    if decision == RELABEL_DECISION and (new_label is None or str(new_label) == ""):
        raise InputError("a relabel decision needs the new label", "give the label to set")
    details = details or {}
    changed = 0
    with store.transaction():
        store.execute(
            f"DELETE FROM {S.REVIEWS} WHERE row_id = ? AND auditor = ?", [row_id, auditor]
        )
        store.execute(
            f"INSERT INTO {S.REVIEWS} VALUES (?, ?, ?, ?, now(), ?)",
            [
                row_id,
                auditor,
                decision,
                None if new_label is None else str(new_label),
                note or None,
            ],
        )
        related = _related_edits(store, row_id, auditor)
        pending = [e[0] for e in related if e[4] == PENDING]
        if decision == REJECT:
            for eid in pending:
                store.execute(
                    f"UPDATE {S.EDITS} SET status = '{REJECTED}' WHERE edit_id = ?", [eid]
                )
            changed += len(pending)
        elif decision == ACCEPT:
            for eid in pending:
                store.execute(
                    f"UPDATE {S.EDITS} SET status = '{ACCEPTED}' WHERE edit_id = ?", [eid]
                )
            changed += len(pending)
            if not related and auditor not in SET_AUDITORS:
                sugg, _ = _suggestion(details)
                if sugg is not None and sugg != given_label:
                    _new_edit(store, row_id, RELABEL, sugg, auditor, run_id, note)
                    changed += 1
                elif auditor in DROP_ON_ACCEPT:
                    _new_edit(store, row_id, DROP, None, auditor, run_id, note)
                    changed += 1
        else:  # relabel: this label wins over any planned relabel of the row
            n = store.scalar(
                f"SELECT count(*) FROM {S.EDITS} WHERE row_id = ? AND action = '{RELABEL}' "
                f"AND status != '{REJECTED}'",
                [row_id],
            )
            store.execute(
                f"UPDATE {S.EDITS} SET status = '{REJECTED}' "
                f"WHERE row_id = ? AND action = '{RELABEL}'",
                [row_id],
            )
            changed += int(n or 0)
            _new_edit(store, row_id, RELABEL, str(new_label), auditor, run_id, note)
            changed += 1
    return changed


def _classes(store) -> list[str]:
    return [
        r[0]
        for r in store.fetchall(
            f"SELECT DISTINCT label::VARCHAR FROM {S.SAMPLES} WHERE label IS NOT NULL ORDER BY 1"
        )
    ]


def review_loop(
    store,
    auditor: str | None = None,
    top: int = 50,
    console=None,
    ask: Callable[[str], str] | None = None,
) -> ReviewReport:
    """The interactive loop (see module doc). `console` (rich) and `ask` (prompt -> answer)
    default to the terminal; an end of input counts as quit."""
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = console or Console(highlight=False)
    if ask is None:

        def ask(prompt: str) -> str:
            return console.input(prompt)

    run_id = store.latest_run_id()
    flags = pending_flags(store, auditor=auditor, top=top, run_id=run_id)
    classes = _classes(store)
    report = ReviewReport()
    if flags.is_empty():
        console.print("nothing to review: every flag of the latest audit has a decision")
        return report
    console.print(
        f"{len(flags)} flags to review, worst first. Keys: [bold]a[/]ccept, [bold]r[/]eject, "
        "re[bold]l[/]abel, [bold]s[/]kip, [bold]q[/]uit."
    )
    total = len(flags)
    for i, row in enumerate(flags.iter_rows(named=True), 1):
        details = json.loads(row["details"]) if row["details"] else {}
        if not isinstance(details, dict):
            details = {"details": details}
        sugg, prob = _suggestion(details)
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("row", Text(f"{row['row_id']} ({row['split']})"))
        grid.add_row("label", Text(str(row["label"])))
        if sugg is not None:
            grid.add_row(
                "suggested", Text(sugg + (f" (p={prob:.2f})" if isinstance(prob, float) else ""))
            )
        grid.add_row("content", Text(str(row["content"] or "")))
        shown = {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in details.items()
            if k not in ("suggested_label", "suggestion")
        }
        if shown:
            grid.add_row("details", Text(json.dumps(shown, default=str)[:300]))
        planned = _related_edits(store, row["row_id"], row["auditor"])
        if planned:
            grid.add_row(
                "planned",
                Text(
                    "; ".join(
                        f"{a}{' -> ' + str(nl) if nl else ''} (row {r}, {st})"
                        for _, r, a, nl, st in planned[:4]
                    )
                ),
            )
        console.print(
            Panel(
                grid,
                title=Text(f"[{i}/{total}] {row['auditor']}  score {row['score']:.4f}"),
                title_align="left",
            )
        )
        decision = None
        while decision is None:
            try:
                key = ask(PROMPT).strip().lower()
            except EOFError:
                key = "q"
            decision = KEYS.get(key[:1]) if key else None
            if decision is None:
                console.print("type a, r, l, s or q")
        if decision == QUIT:
            break
        report.shown += 1
        if decision == SKIP:
            report.decisions[SKIP] += 1
            continue
        new_label = None
        if decision == RELABEL_DECISION:
            while new_label is None:
                hint = f" [{sugg}]" if sugg else ""
                try:
                    answer = ask(
                        escape(f"new label{hint} (one of {', '.join(classes[:12])}) > ")
                    ).strip()
                except EOFError:
                    answer = ""
                answer = answer or (sugg or "")
                if answer in classes:
                    new_label = answer
                elif not answer:
                    break
                else:
                    console.print(Text(f"{answer!r} is not a label of this store"))
            if new_label is None:
                console.print("relabel cancelled: skipped")
                report.decisions[SKIP] += 1
                continue
        report.edits_changed += record_decision(
            store,
            int(row["row_id"]),
            row["auditor"],
            decision,
            new_label=new_label,
            details=details,
            given_label=row["label"],
            run_id=run_id,
        )
        report.decisions[decision] += 1
    report.remaining = len(pending_flags(store, auditor=auditor, top=0, run_id=run_id))
    console.print(report.summary())
    console.print(
        "apply with `datacure export OUT` (decisions are kept by a new `datacure repair`)"
    )
    return report
