"""Plan repairs from the latest audit as rows of `edits` (an overlay: `samples` is never changed).

Each auditor declares its repair (auditor/base.py `RepairAction`: drop, relabel, keep one of a
set, or none; the `details` keys holding its evidence; a priority; whether the policy plans it);
repair/findings.py reads the declarations and names no auditor. With the built-ins, the policy
(repair.policy.RepairPolicy) decides:

- duplicates (`exact_duplicate`, `near_duplicate`): the flagged rows and the members they name
  form sets (connected components, so overlapping sets merge); within each set and split the
  smallest row_id that is not dropped for another reason is kept, the others are dropped.
  Duplicates are removed in every split (a duplicated test row inflates the test score too);
  copies that sit in different splits are the leakage auditor's business.
- `leakage`: a flagged row and its partners are dropped where they lie in `drop_from`
  (default train), so the evaluation split stays whole.
- `contamination`: flagged rows in `drop_from` are dropped.
- `label`: a flagged row whose `suggested_label_prob` >= `relabel_threshold` (and whose suggested
  label differs from the given one) is relabelled, in every split; a less confident one is kept
  (or dropped with `drop_unconfident_label_issues`).
- `outlier` (only with `drop_outliers`): flagged rows in `drop_from` are dropped.
- rebalancing (`rebalance_by`): see generators/rebalance.py.

Safety: before anything is written (or generated), the plan's drops on audit findings are
counted per split x label x group cell (group: the `rebalance_by` column, else one per label);
a plan that would remove more than `max_cell_drop_share` (0.25) of any cell is refused with the
cells named, since a check that empties a cell has usually misfired on this data (exact
duplicates, whose content stays in the cell, are not counted; a cell may always lose one row).
`--max-cell-drop-share 1` (policy key `max_cell_drop_share`) accepts such a plan. Every plan
reports its effect on each cell (`RepairReport.cells`, the summary, `meta.repair_plan.cells`).

A row gets at most one drop edit (named by the reason of lowest declared priority: leakage,
contamination, exact_duplicate, near_duplicate, outlier, label; all reasons are kept in
`details.reasons`), and a
dropped row is not relabelled. A rerun replaces the pending edits of the previous plan; reviewed
edits (accepted or rejected) are kept, and the new plan adds no edit of the same action for the
same row. A review that rejected an auditor's flag on a row (`reviews.decision = 'reject'`) stops
that auditor's flag from producing edits for the row.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from ..store import schema as S
from ..store.errors import InputError
from .cells import ALL_ROWS, cell_effects, cell_rows, check_cells
from .findings import issue_edits, rejected_flags
from .policy import (
    ACCEPTED,
    ADD,
    DROP,
    GENERATED,
    PENDING,
    REJECTED,
    RELABEL,
    RepairPolicy,
    make_policy,
)

EDIT_COLUMNS = (S.ROW_ID, "action", "new_label", "reason", "auditor", "details")


@dataclass
class RepairReport:
    """What one `datacure repair` planned."""

    plan_id: int
    run_id: int | None
    policy: dict
    counts: dict = field(default_factory=dict)  # "action/reason" -> edits
    rows_affected: dict = field(default_factory=dict)  # "action/reason" -> rows (copies summed)
    notes: list[str] = field(default_factory=list)
    generation: dict = field(default_factory=dict)
    kept_reviewed: int = 0
    seconds: float = 0.0
    # the plan's effect on each split x label x group cell (see `cell_effects`)
    cells: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        src = f"audit run {self.run_id}" if self.run_id is not None else "no audit run"
        lines = [f"repair plan {self.plan_id} from {src} ({self.seconds:.1f} s):"]
        if not self.counts:
            lines.append("  no edits planned")
        for key in sorted(self.counts):
            n, rows = self.counts[key], self.rows_affected.get(key, self.counts[key])
            extra = f" ({rows} rows)" if rows != n else ""
            lines.append(f"  {key}: {n} edits{extra}")
        if self.generation:
            g = self.generation
            lines.append(
                f"  generated: {g.get('kept', 0)} kept of {g.get('candidates', 0)} candidates "
                f"({g.get('rejected', 0)} rejected by verification, "
                f"{g.get('duplicates', 0)} duplicates)"
            )
        if self.kept_reviewed:
            lines.append(f"  {self.kept_reviewed} reviewed edits from earlier plans kept")
        changed = [c for c in self.cells if c["rows"] != c["after"] or c["relabelled"]]
        if changed:
            lines.append("  effect on label x group cells (rows before -> after):")
            worst = sorted(changed, key=lambda c: (-c["drop_share"], c["split"], c["label"]))
            for c in worst[:12]:
                grp = "" if c["group"] == ALL_ROWS else f" x {c['group']}"
                parts = [f"-{c['dropped']} on findings" if c["dropped"] else ""]
                if c["dropped_exact_duplicate"]:
                    parts.append(f"-{c['dropped_exact_duplicate']} exact duplicates")
                if c["dropped_rebalance"]:
                    parts.append(f"-{c['dropped_rebalance']} rebalance")
                if c["added"]:
                    parts.append(f"+{c['added']} added")
                if c["relabelled"]:
                    parts.append(f"{c['relabelled']} relabelled away")
                detail = ", ".join(p for p in parts if p)
                lines.append(
                    f"    {c['split']} / {c['label']}{grp}: {c['rows']} -> {c['after']} ({detail})"
                )
            if len(changed) > 12:
                lines.append(f"    ... {len(changed) - 12} more cells (RepairReport.cells)")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("  review with `datacure edits`; apply with `datacure export OUT`")
        return "\n".join(lines)


# --- the edits table -----------------------------------------------------------------------------
def _kept_edits(store) -> pl.DataFrame:
    """Reviewed edits of earlier plans (they survive a rerun)."""
    return store.polars(
        f"SELECT edit_id, row_id, action, new_label, status, details FROM {S.EDITS} "
        f"WHERE status IN ('{ACCEPTED}', '{REJECTED}') ORDER BY edit_id"
    )


def _insert_edits(store, rows: list[dict], run_id: int | None, plan_id: int) -> int:
    if not rows:
        return 0
    start = int(store.scalar(f"SELECT coalesce(max(edit_id), 0) + 1 FROM {S.EDITS}"))
    frame = pl.DataFrame(
        {
            "edit_id": np.arange(start, start + len(rows), dtype=np.int32),
            "run_id": [run_id] * len(rows),
            S.ROW_ID: [int(r[S.ROW_ID]) for r in rows],
            "action": [r["action"] for r in rows],
            "new_label": [
                None if r.get("new_label") is None else str(r["new_label"]) for r in rows
            ],
            "reason": [r["reason"] for r in rows],
            "auditor": [r.get("auditor") for r in rows],
            "status": [r.get("status", PENDING) for r in rows],
            "details": [
                json.dumps({**r.get("details", {}), "plan_id": plan_id}, default=str) for r in rows
            ],
        },
        schema_overrides={"run_id": pl.Int32, S.ROW_ID: pl.Int64},
    )
    store.con.register("_dc_edits", frame.to_arrow())
    try:
        store.execute(
            f"INSERT INTO {S.EDITS} SELECT edit_id, run_id, row_id, action, new_label, reason, "
            "auditor, status, details::JSON, now() FROM _dc_edits"
        )
    finally:
        store.con.unregister("_dc_edits")
    return len(rows)


def plan_repairs(
    store,
    rebalance_by: str | None = None,
    strategy: str = "undersample",
    config=None,
    drop_outliers: bool = False,
    relabel_threshold: float = 0.8,
    drop_from: str | None = None,
    max_cell_drop_share: float | None = None,
    ratio: float | None = None,
    synthetic_share: float | None = None,
    llm_url: str | None = None,
    llm_model: str | None = None,
    llm_key_env: str = "OPENAI_API_KEY",
    local_model: str | None = None,
    seed: int = 0,
    progress=None,
    policy: RepairPolicy | None = None,
    embedder=None,
) -> RepairReport:
    """Turn the latest audit (and the rebalancing policy) into `edits` rows.

    `policy` (a RepairPolicy) replaces config and flags when given (library use). `embedder`
    (anything with `.encode(items) -> [n, d]`) replaces the store's embedder for verifying
    generated samples. Heavy work (generation) happens before the one transaction that replaces
    the pending edits, so a failure leaves the edits as they were."""
    t0 = time.perf_counter()
    store.require_samples()
    if policy is None:
        policy = make_policy(
            config,
            rebalance_by=rebalance_by,
            strategy=strategy,
            drop_outliers=drop_outliers,
            relabel_threshold=relabel_threshold,
            drop_from=drop_from,
            max_cell_drop_share=max_cell_drop_share,
            ratio=ratio,
            synthetic_share=synthetic_share,
            llm_url=llm_url,
            llm_model=llm_model,
            llm_key_env=llm_key_env,
            local_model=local_model,
            seed=seed,
        )
    run_id = _audit_run(store, policy)
    plan_id = int(store.meta_get("repair_plan_seq", 0)) + 1
    kept = _kept_edits(store)
    plan = _plan_edits(store, run_id, plan_id, policy, kept, progress, embedder)
    _commit_plan(store, plan_id, run_id, policy, plan)
    counts, rows = _counts(plan.edits)
    return RepairReport(
        plan_id=plan_id,
        run_id=run_id,
        policy=policy.model_dump(mode="json"),
        counts=counts,
        rows_affected=rows,
        notes=plan.notes,
        generation=plan.generation,
        kept_reviewed=len(kept),
        seconds=time.perf_counter() - t0,
        cells=plan.cells,
    )


def _audit_run(store, policy: RepairPolicy) -> int | None:
    """The latest audit run; None only when the policy rebalances (it needs no audit)."""
    run_id = store.latest_run_id()
    if run_id is None and not policy.rebalance_by:
        raise InputError(
            "the store has no audit run to plan repairs from",
            f"run `datacure audit --db {store.path}` first, or pass --rebalance-by COLUMN",
        )
    return run_id


@dataclass
class _Plan:
    """What a plan adds to `edits`, the generated rows behind its additions, and its notes and
    effect on each cell."""

    edits: list[dict]
    generated: pl.DataFrame | None
    generation: dict
    notes: list[str]
    cells: list[dict]


def _plan_edits(store, run_id, plan_id, policy, kept, progress, embedder) -> _Plan:
    """The audit's drops and relabels, checked against the cells before any generation, then
    the rebalancing; edits already reviewed (`kept`) are not planned again."""
    notes: list[str] = []
    reviewed = {(int(r), a) for r, a in kept.select(S.ROW_ID, "action").iter_rows()}
    accepted_drops = set(
        kept.filter((pl.col("action") == DROP) & (pl.col("status") == ACCEPTED))[S.ROW_ID].to_list()
    )
    drops, relabels = _finding_edits(
        store, run_id, policy, reviewed, accepted_drops, progress, notes
    )
    cells = cell_rows(store, policy)
    # safety first, before any generation: drops on findings that would starve a cell
    check_cells(cell_effects(cells, drops, [], []), policy)
    adds, gen_rows, gen_stats = [], None, {}
    if policy.rebalance_by:
        rb = _rebalance(
            store, policy, kept, drops, relabels, accepted_drops, plan_id, progress, embedder
        )
        drops += [d | {"action": DROP} for d in rb.drops if (d[S.ROW_ID], DROP) not in reviewed]
        adds, gen_rows, gen_stats = rb.adds, rb.generated, rb.stats
        notes += rb.notes
    effects = cell_effects(cells, drops, relabels, adds, policy.rebalance_split)
    return _Plan(drops + relabels + adds, gen_rows, gen_stats, notes, effects)


def _rebalance(store, policy, kept, drops, relabels, accepted_drops, plan_id, progress, embedder):
    """generators/rebalance.py's plan for the policy's groups, given the edits planned and
    kept so far (the rows dropped and relabelled, the accepted additions)."""
    from ..generators.rebalance import plan_rebalance

    return plan_rebalance(
        store,
        policy,
        dropped=accepted_drops | {d[S.ROW_ID] for d in drops},
        relabels={r[S.ROW_ID]: r["new_label"] for r in relabels} | _accepted_relabels(kept),
        kept_adds=kept.filter((pl.col("action") == ADD) & (pl.col("status") == ACCEPTED)),
        plan_id=plan_id,
        progress=progress,
        embedder=embedder,
    )


def _counts(edits: list[dict]) -> tuple[dict, dict]:
    """Edits and rows affected per `action/reason` (an add counts its copies)."""
    counts, rows = Counter(), Counter()
    for e in edits:
        key = f"{e['action']}/{e['reason']}"
        counts[key] += 1
        rows[key] += int(e.get("details", {}).get("copies", 1))
    return dict(counts), dict(rows)


def _finding_edits(store, run_id, policy, reviewed: set, accepted_drops: set, progress, notes):
    """The drops and relabels the audit run's flags call for (none without a run), less those
    a review already decided and those on rows whose drop was accepted."""
    if run_id is None:
        return [], []
    if progress:
        progress(f"planning drops and relabels from audit run {run_id}")
    drops, relabels, n = issue_edits(store, run_id, policy, rejected_flags(store))
    notes += n
    drops = [
        d | {"action": DROP}
        for d in drops
        if (d[S.ROW_ID], DROP) not in reviewed and d[S.ROW_ID] not in accepted_drops
    ]
    relabels = [
        r | {"action": RELABEL}
        for r in relabels
        if (r[S.ROW_ID], RELABEL) not in reviewed and r[S.ROW_ID] not in accepted_drops
    ]
    return drops, relabels


def _commit_plan(store, plan_id, run_id, policy, plan: _Plan) -> None:
    """One transaction: the pending edits replaced by the plan's, its generated rows, and the
    plan's record in the store's meta."""
    with store.transaction():
        _replace_pending(store)
        if plan.generated is not None and len(plan.generated):
            _insert_generated(store, plan.generated)
        _insert_edits(store, plan.edits, run_id, plan_id)
        store.meta_set("repair_plan_seq", plan_id)
        store.meta_set(
            "repair_plan",
            {
                "plan_id": plan_id,
                "run_id": run_id,
                "policy": policy.model_dump(mode="json"),
                "notes": plan.notes,
                "cells": plan.cells,
            },
        )


def _accepted_relabels(kept: pl.DataFrame) -> dict:
    acc = kept.filter((pl.col("action") == RELABEL) & (pl.col("status") == ACCEPTED))
    return dict(acc.select(S.ROW_ID, "new_label").iter_rows())


def _replace_pending(store) -> None:
    """Delete the pending edits of earlier plans and the generated rows only they used."""
    store.execute(f"DELETE FROM {S.EDITS} WHERE status = '{PENDING}'")
    store.execute(
        f"DELETE FROM {S.GENERATED} WHERE row_id IS NULL OR row_id NOT IN "
        f"(SELECT row_id FROM {S.EDITS} WHERE action = '{ADD}' "
        f"AND json_extract_string(details, '$.kind') = '{GENERATED}')"
    )


def _insert_generated(store, frame: pl.DataFrame) -> None:
    start = int(store.scalar(f"SELECT coalesce(max(gen_id), 0) + 1 FROM {S.GENERATED}"))
    frame = frame.with_columns(
        pl.int_range(start, start + len(frame), dtype=pl.Int64).alias("gen_id")
    )
    cols = [c for c, _ in store.columns(S.GENERATED)]
    sel = ", ".join(
        "now()" if c == "created_at" else ("details::JSON" if c == "details" else S.quote(c))
        for c in cols
    )
    store.con.register("_dc_gen", frame.to_arrow())
    try:
        store.execute(f"INSERT INTO {S.GENERATED} SELECT {sel} FROM _dc_gen")
    finally:
        store.con.unregister("_dc_gen")
