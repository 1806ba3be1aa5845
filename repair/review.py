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

`apply_review` is the one function that makes a decision, for one flag or many at once: this
loop, the browser app (`datacure serve`) and `POST /api/reviews` all call it. Every decision is
one row of `reviews(row_id, auditor, decision, new_label, decided_at, note)`,
written at once in its own transaction (quitting, or a killed terminal, keeps what was decided),
and it updates `edits`, so `datacure export` honours it without a new `repair`, and a later
`repair` keeps it (reviewed edits survive a re-plan; rejected flags plan nothing).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..auditor.base import DROP as DROP_REPAIR
from ..store import schema as S
from ..store.errors import InputError
from .policy import ACCEPTED, ADD, DROP, PENDING, REJECTED, RELABEL

ACCEPT, REJECT, RELABEL_DECISION, SKIP, QUIT = "accept", "reject", "relabel", "skip", "quit"
KEYS = {"a": ACCEPT, "r": REJECT, "l": RELABEL_DECISION, "s": SKIP, "q": QUIT}
SNIPPET = 600
# rich markup: the key letter in bold (a bare "[a]" would be read as a style tag)
PROMPT = "[bold]a[/]ccept [bold]r[/]eject re[bold]l[/]abel [bold]s[/]kip [bold]q[/]uit > "


@dataclass
class ReviewResult:
    """What one `apply_review` call did."""

    decision: str
    flags: int = 0
    edits_changed: int = 0


@dataclass
class ReviewReport:
    decisions: Counter = field(default_factory=Counter)
    shown: int = 0
    remaining: int = 0
    edits_changed: int = 0
    interrupted: bool = False  # Ctrl-C ended the loop (the decisions made before it are saved)

    def summary(self) -> str:
        made = ", ".join(f"{k} {v}" for k, v in sorted(self.decisions.items())) or "none"
        end = "; interrupted: the decisions above are saved" if self.interrupted else ""
        return (
            f"reviewed {self.shown} flags: {made}; {self.edits_changed} edits updated; "
            f"{self.remaining} flags left to review{end}"
        )


def _rearm_sigint() -> None:
    """Re-install Python's SIGINT handler before a prompt. Importing polars installs its own
    (one that restarts an interrupted read), so a Ctrl-C at the prompt never reached Python and
    `datacure review` kept waiting for an answer."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            signal.signal(signal.SIGINT, handler)


def _read_line(stream) -> str:
    """One answer from `stream` (what `input()` returns; EOFError at its end). On a terminal the
    wait is a `select` loop, so a Ctrl-C reaches Python at once: Python's SIGINT handler only sets
    a flag, and a signal that lands after the prompt is written but before `input()` has entered
    its blocking read() (a window of some microseconds, wide on a loaded machine) interrupts
    nothing, so the review waited for an answer and the Ctrl-C took effect only after it. A
    canonical-mode terminal hands read() one line at a time, so nothing is left buffered in
    `stream` behind the `select`."""
    import select

    if stream.isatty():
        fd = stream.fileno()
        while not select.select([fd], [], [], 0.1)[0]:
            pass  # each pass through Python runs a pending SIGINT's handler
    line = stream.readline()
    if not line:
        raise EOFError
    return line.rstrip("\r\n")


def set_auditors() -> list[str]:
    """Auditors whose flag names a set of rows (their repair declares a `set_key`): accepting or
    rejecting one flag decides the set's planned edits."""
    from ..auditor import load_builtin

    return sorted(n for n, c in load_builtin().items() if c.repair.set_key)


def drop_on_accept() -> list[str]:
    """Auditors whose accepted flag drops the row when the plan has nothing for it (a declared
    `drop` repair without a set)."""
    from ..auditor import load_builtin

    return sorted(
        n
        for n, c in load_builtin().items()
        if c.repair.action == DROP_REPAIR and not c.repair.set_key
    )


def _sql_names(names: list[str]) -> str:
    """A SQL list of auditor names (registry keys: word characters), NULL when empty."""
    return ", ".join(f"'{n}'" for n in names) or "NULL"


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


def _label_classes(store) -> list[str]:
    return [
        r[0]
        for r in store.fetchall(
            f"SELECT DISTINCT label::VARCHAR FROM {S.SAMPLES} WHERE label IS NOT NULL ORDER BY 1"
        )
    ]


def apply_review(
    store,
    flags,
    decision: str,
    new_label: str | None = None,
    note: str = "",
    run_id: int | None = None,
) -> ReviewResult:
    """Store one decision on a set of flags and apply it to `edits`, in one transaction.

    The single place a review decision is made: `datacure review`, the browser app (one row or a
    bulk action on a filtered selection) and `POST /api/reviews` all call it, so they behave
    alike (see the module doc for what accept, reject and relabel do). `flags` is a sequence of
    (row_id, auditor) pairs, or a frame with those columns; each must be a flag (`is_issue`) of
    the run (default: the latest), else nothing is written and InputError names the first
    unknown ones. A relabel takes one `new_label` for all its rows, which must be a label of the
    store. Set-based: one statement per step whatever the number of flags (a bulk accept of 100k
    flags costs a few statements, not 100k round trips). A flag decided twice keeps the last
    decision (the `reviews` row is replaced)."""
    import pyarrow as pa

    if decision not in (ACCEPT, REJECT, RELABEL_DECISION):
        raise InputError(f"unknown review decision {decision!r}", "use accept, reject or relabel")
    frame = _flag_frame(flags)
    result = ReviewResult(decision=decision)
    if frame.is_empty():
        return result
    new_label = _checked_label(store, new_label) if decision == RELABEL_DECISION else None
    run_id = run_id if run_id is not None else store.latest_run_id()
    if run_id is None:
        raise InputError(
            "the store has no audit run to review",
            f"run `datacure audit --db {store.path}` first",
        )
    store.con.register("_dc_rev", pa.table(frame.to_arrow()))
    try:
        with store.transaction():
            _load_flags(store, run_id, frame.height)
            store.execute(
                f"DELETE FROM {S.REVIEWS} WHERE (row_id, auditor) IN "
                "(SELECT row_id, auditor FROM _dc_flags)"
            )
            store.execute(
                f"INSERT INTO {S.REVIEWS} SELECT row_id, auditor, ?, ?, now(), ? FROM _dc_flags",
                [decision, new_label, note or None],
            )
            result.edits_changed = _apply_to_edits(store, decision, new_label, note, run_id)
            store.execute("DROP TABLE IF EXISTS _dc_flags")
    finally:
        store.con.unregister("_dc_rev")
    result.flags = frame.height
    return result


def _flag_frame(flags):
    """`flags` (a frame, or (row_id, auditor) pairs) as a frame of distinct pairs."""
    import polars as pl

    if isinstance(flags, pl.DataFrame):
        frame = flags.select(pl.col(S.ROW_ID).cast(pl.Int64), pl.col("auditor").cast(pl.Utf8))
    else:
        pairs = list(flags)
        frame = pl.DataFrame(
            {S.ROW_ID: [int(p[0]) for p in pairs], "auditor": [str(p[1]) for p in pairs]},
            schema={S.ROW_ID: pl.Int64, "auditor": pl.Utf8},
        )
    return frame.unique(maintain_order=True)


def _checked_label(store, new_label) -> str:
    """A relabel's new label, which must be a label of the store."""
    if new_label is None or str(new_label) == "":
        raise InputError("a relabel decision needs the new label", "give the label to set")
    new_label = str(new_label)
    classes = _label_classes(store)
    if new_label not in classes:
        raise InputError(
            f"{new_label!r} is not a label of this store",
            f"choose one of: {', '.join(classes[:20])}",
        )
    return new_label


def _load_flags(store, run_id: int, expected: int) -> None:
    """Temp table `_dc_flags` (row_id, auditor, given label, suggestion) of the registered pairs
    `_dc_rev` that are flags of the run; InputError naming a few when some are not."""
    store.execute(
        f"""CREATE OR REPLACE TEMP TABLE _dc_flags AS
        SELECT d.row_id, d.auditor, s.label::VARCHAR AS given,
               coalesce(i.details ->> 'suggested_label', i.details ->> 'suggestion')
                   AS suggestion
        FROM _dc_rev d
        JOIN {S.ISSUES} i ON i.run_id = ? AND i.is_issue AND i.row_id = d.row_id
             AND i.auditor = d.auditor
        JOIN {S.SAMPLES} s ON s.row_id = d.row_id""",
        [run_id],
    )
    found = int(store.scalar("SELECT count(*) FROM _dc_flags"))
    if found != expected:
        missing = store.fetchall(
            "SELECT row_id, auditor FROM _dc_rev ANTI JOIN _dc_flags "
            "USING (row_id, auditor)"
            " ORDER BY 1, 2 LIMIT 5"
        )
        raise InputError(
            f"{expected - found} of the {expected} (row_id, auditor) pairs are "
            f"not flags of audit run {run_id}, e.g. "
            + ", ".join(f"({r}, {a!r})" for r, a in missing),
            "review rows the audit flagged (`datacure issues`, or GET /api/issues)",
        )


def _apply_to_edits(store, decision: str, new_label, note: str, run_id: int) -> int:
    """The decision on `_dc_flags` applied to `edits` (module doc): the edits the flags
    produced accepted or rejected (a relabel rejects the rows' planned relabels), and the
    decision's own edits added. Returns the edits changed or added."""
    sets, drops = _sql_names(set_auditors()), _sql_names(drop_on_accept())
    related = _produced_sql("_dc_flags")
    changed = 0
    new_edits = None
    if decision in (ACCEPT, REJECT):
        status = ACCEPTED if decision == ACCEPT else REJECTED
        changed += _count(
            store.fetchall(
                f"UPDATE {S.EDITS} SET status = '{status}' WHERE status = '{PENDING}' "
                f"AND edit_id IN (SELECT edit_id FROM ({related}))"
            )
        )
        if decision == ACCEPT:
            # no edit planned from the flag: the default fix (module doc)
            new_edits = f"""SELECT f.row_id, f.auditor,
                CASE WHEN f.suggestion IS NOT NULL
                      AND f.suggestion IS DISTINCT FROM f.given THEN '{RELABEL}'
                     ELSE '{DROP}' END AS action,
                CASE WHEN f.suggestion IS NOT NULL
                      AND f.suggestion IS DISTINCT FROM f.given THEN f.suggestion END
                    AS new_label
                FROM _dc_flags f
                WHERE f.auditor NOT IN ({sets})
                  AND NOT EXISTS (SELECT 1 FROM ({related}) r
                                  WHERE r.flag_row = f.row_id
                                    AND r.flag_auditor = f.auditor)
                  AND ((f.suggestion IS NOT NULL AND f.suggestion IS DISTINCT FROM f.given)
                       OR f.auditor IN ({drops}))"""
    else:  # relabel: this label wins over any planned relabel of the rows
        changed += _count(
            store.fetchall(
                f"UPDATE {S.EDITS} SET status = '{REJECTED}' WHERE action = '{RELABEL}' "
                f"AND status != '{REJECTED}' AND row_id IN (SELECT row_id FROM _dc_flags)"
            )
        )
        # one relabel per row, even when several of its flags were decided together
        new_edits = f"""SELECT row_id, min(auditor) AS auditor, '{RELABEL}' AS action,
            ?::VARCHAR AS new_label FROM _dc_flags GROUP BY row_id"""
    if new_edits is not None:
        params = [new_label] if decision == RELABEL_DECISION else []
        changed += _count(
            store.fetchall(
                f"""INSERT INTO {S.EDITS}
                SELECT (SELECT coalesce(max(edit_id), 0) FROM {S.EDITS})
                           + row_number() OVER (ORDER BY n.row_id, n.auditor),
                       ?, n.row_id, n.action, n.new_label, 'review', n.auditor,
                       '{ACCEPTED}', json_object('review', true, 'note', ?), now()
                FROM ({new_edits}) n""",
                [run_id, note or "", *params],
            )
        )
    return changed


def _count(rows: list[tuple]) -> int:
    """Rows changed by an UPDATE/INSERT (DuckDB returns the count as a one-row result)."""
    return int(rows[0][0]) if rows else 0


def _produced_sql(flags: str) -> str:
    """SQL: (edit_id, flag_row, flag_auditor) of the edits each flag of the table `flags`
    (row_id, auditor) produced, additions aside: the edits of the flag's own row, and for a
    set auditor the edits whose kept or flagged row is the flag's row."""
    sets = _sql_names(set_auditors())
    return f"""SELECT e.edit_id, f.row_id AS flag_row, f.auditor AS flag_auditor
        FROM {S.EDITS} e JOIN {flags} f ON e.action != '{ADD}' AND e.auditor = f.auditor
         AND (e.row_id = f.row_id OR (f.auditor IN ({sets}) AND (
              json_extract(e.details, '$.kept_row_id')::BIGINT = f.row_id
              OR json_extract(e.details, '$.flagged_row_id')::BIGINT = f.row_id)))"""


def _related_edits(store, row_id: int, auditor: str) -> list[tuple]:
    """Pending or reviewed edits that come from this flag (see module doc), for display."""
    return store.fetchall(
        "WITH _dc_flag AS (SELECT ?::BIGINT AS row_id, ?::VARCHAR AS auditor) "
        f"SELECT edit_id, row_id, action, new_label, status FROM {S.EDITS} "
        f"WHERE edit_id IN (SELECT edit_id FROM ({_produced_sql('_dc_flag')})) ORDER BY edit_id",
        [row_id, auditor],
    )


def record_decision(
    store,
    row_id: int,
    auditor: str,
    decision: str,
    new_label: str | None = None,
    note: str = "",
    run_id: int | None = None,
) -> int:
    """One flag's decision (`apply_review` on one pair); returns how many edits changed."""
    return apply_review(
        store, [(row_id, auditor)], decision, new_label=new_label, note=note, run_id=run_id
    ).edits_changed


def review_loop(
    store,
    auditor: str | None = None,
    top: int = 50,
    console=None,
    ask: Callable[[str], str] | None = None,
) -> ReviewReport:
    """The interactive loop (see module doc). `console` (rich) and `ask` (prompt -> answer)
    default to the terminal; an end of input counts as quit, and Ctrl-C stops the loop with the
    decisions made so far saved (`interrupted` in the report)."""
    from rich.console import Console

    console = console or Console(highlight=False)
    if ask is None:

        def ask(prompt: str) -> str:
            _rearm_sigint()
            console.print(prompt, end="")
            return _read_line(sys.stdin)

    run_id = store.latest_run_id()
    flags = pending_flags(store, auditor=auditor, top=top, run_id=run_id)
    classes = _label_classes(store)
    report = ReviewReport()
    if flags.is_empty():
        console.print("nothing to review: every flag of the latest audit has a decision")
        return report
    console.print(
        f"{len(flags)} flags to review, worst first. Keys: [bold]a[/]ccept, [bold]r[/]eject, "
        "re[bold]l[/]abel, [bold]s[/]kip, [bold]q[/]uit."
    )
    total = len(flags)
    try:
        for i, row in enumerate(flags.iter_rows(named=True), 1):
            console.print(_flag_panel(store, row, i, total))
            if _decide(store, row, report, ask, console, classes, run_id) == QUIT:
                break
    except KeyboardInterrupt:  # decisions already made were each committed: say so
        report.interrupted = True
    report.remaining = len(pending_flags(store, auditor=auditor, top=0, run_id=run_id))
    console.print(report.summary())
    console.print(
        "apply with `datacure export OUT` (decisions are kept by a new `datacure repair`)"
    )
    return report


def _flag_panel(store, row: dict, i: int, total: int):
    """The rich panel that shows one flag: row, label, suggestion, content, details, plans."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    details = json.loads(row["details"]) if row["details"] else {}
    if not isinstance(details, dict):
        details = {"details": details}
    sugg, prob = _suggestion(details)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("row", Text(f"{row[S.ROW_ID]} ({row['split']})"))
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
    planned = _related_edits(store, row[S.ROW_ID], row["auditor"])
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
    return Panel(
        grid,
        title=Text(f"[{i}/{total}] {row['auditor']}  score {row['score']:.4f}"),
        title_align="left",
    )


def _ask_key(ask, console) -> str:
    """One of the decisions (an end of input is quit)."""
    decision = None
    while decision is None:
        try:
            key = ask(PROMPT).strip().lower()
        except EOFError:
            key = "q"
        decision = KEYS.get(key[:1]) if key else None
        if decision is None:
            console.print("type a, r, l, s or q")
    return decision


def _ask_label(ask, console, classes: list[str], sugg: str | None) -> str | None:
    """A label of the store (the suggestion on an empty answer), or None: cancelled."""
    from rich.markup import escape
    from rich.text import Text

    while True:
        hint = f" [{sugg}]" if sugg else ""
        try:
            answer = ask(escape(f"new label{hint} (one of {', '.join(classes[:12])}) > ")).strip()
        except EOFError:
            answer = ""
        answer = answer or (sugg or "")
        if answer in classes:
            return answer
        if not answer:
            return None
        console.print(Text(f"{answer!r} is not a label of this store"))


def _decide(store, row: dict, report: ReviewReport, ask, console, classes, run_id) -> str:
    """Ask for one flag's decision, record it, count it in `report`; returns the decision."""
    decision = _ask_key(ask, console)
    if decision == QUIT:
        return decision
    report.shown += 1
    if decision == SKIP:
        report.decisions[SKIP] += 1
        return decision
    new_label = None
    if decision == RELABEL_DECISION:
        details = json.loads(row["details"]) if row["details"] else {}
        sugg, _ = _suggestion(details if isinstance(details, dict) else {})
        new_label = _ask_label(ask, console, classes, sugg)
        if new_label is None:
            console.print("relabel cancelled: skipped")
            report.decisions[SKIP] += 1
            return SKIP
    report.edits_changed += record_decision(
        store, int(row[S.ROW_ID]), row["auditor"], decision, new_label=new_label, run_id=run_id
    )
    report.decisions[decision] += 1
    return decision
