"""The edits an audit run's flags call for: drops (sets of duplicates keep one row each) and
relabels, read from each auditor's declared repair (auditor/base.py `RepairAction`) and the
`details` keys it names. The rules are described in repair/plan.py, which puts these edits
together with the rebalancing into one plan.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..auditor.base import DROP as DROP_REPAIR
from ..auditor.base import KEEP_ONE, NO_REPAIR, RepairAction
from ..auditor.base import RELABEL as RELABEL_REPAIR
from ..store import schema as S
from ..store.errors import InputError
from .policy import RepairPolicy, declared_repairs


def _evidence_sql(key: str, sql_type: str) -> str:
    """SQL reading `details[key]` as `sql_type` (`FIRST DOUBLE`: a number or a list's first)."""
    path = "'$." + key.replace("'", "''") + "'"
    if sql_type == "FIRST DOUBLE":
        first = "'$." + key.replace("'", "''") + "[0]'"
        return (
            f"coalesce(TRY_CAST(json_extract(i.details, {first}) AS DOUBLE), "
            f"TRY_CAST(json_extract(i.details, {path}) AS DOUBLE))"
        )
    if sql_type == "VARCHAR":
        return f"json_extract_string(i.details, {path})"
    return f"TRY_CAST(json_extract(i.details, {path}) AS {sql_type})"


def _flags(store, run_id: int, auditor: str, fields: dict[str, str]) -> pl.DataFrame:
    """Flagged rows of one auditor in one run, with `fields` extracted from `details` by SQL."""
    cols = "".join(f", {expr} AS {S.quote(name)}" for name, expr in fields.items())
    return store.polars(
        f"SELECT i.row_id, s.split{cols} FROM {S.ISSUES} i "
        f"JOIN {S.SAMPLES} s USING (row_id) "
        f"WHERE i.run_id = ? AND i.auditor = ? AND i.is_issue ORDER BY i.row_id",
        [run_id, auditor],
    )


def rejected_flags(store) -> set[tuple[int, str]]:
    """(row_id, auditor) pairs whose flag a reviewer rejected."""
    rows = store.fetchall(
        f"SELECT row_id, auditor FROM {S.REVIEWS} WHERE lower(decision) IN "
        "('reject', 'rejected', 'keep', 'false_positive')"
    )
    return {(int(r), str(a)) for r, a in rows}


def _without_rejected(frame: pl.DataFrame, auditor: str, rejected: set) -> pl.DataFrame:
    if not rejected or frame.is_empty():
        return frame
    bad = [r for r, a in rejected if a == auditor]
    return frame.filter(~pl.col(S.ROW_ID).is_in(bad)) if bad else frame


def _split_filter(store, policy: RepairPolicy) -> list[str]:
    splits = store.splits()
    if policy.drop_from.strip().lower() == "all":
        return splits
    chosen = [s.strip() for s in policy.drop_from.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in splits]
    if unknown:
        raise InputError(
            f"--drop-from names split(s) not in the store: {', '.join(unknown)}",
            f"choose from {', '.join(splits)} (or 'all')",
        )
    return chosen


def _set_drops(
    store, run_id: int, repairs: dict[str, RepairAction], other_drops: set[int], rejected: set
) -> list[dict]:
    """Drop all but one row per set and split, the sets joined over the `keep_one_of_set`
    auditors in `repairs` (a row's reason: the auditor of lowest priority that flagged it)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    names = sorted(repairs, key=lambda n: repairs[n].priority)
    src, dst, flagged_by = [], [], {}
    for name in names:
        key = repairs[name].set_key
        fr = _without_rejected(
            _flags(store, run_id, name, {"members": _evidence_sql(key, "BIGINT[]")}),
            name,
            rejected,
        )
        if fr.is_empty():
            continue
        pairs = fr.select(S.ROW_ID, "members").explode("members").drop_nulls("members")
        rid = fr[S.ROW_ID].to_numpy()
        src += [rid, pairs[S.ROW_ID].to_numpy()]
        dst += [rid, pairs["members"].to_numpy()]
        for r in rid.tolist():  # the first auditor in `names` (lowest priority) wins the reason
            flagged_by.setdefault(int(r), name)
    if not src:
        return []
    a, b = np.concatenate(src).astype(np.int64), np.concatenate(dst).astype(np.int64)
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    n = len(nodes)
    g = coo_matrix((np.ones(len(a)), (inv[: len(a)], inv[len(a) :])), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    info = pl.DataFrame({S.ROW_ID: nodes, "set": comp})
    splits = store.polars(f"SELECT row_id, split FROM {S.SAMPLES}")
    info = info.join(splits, on=S.ROW_ID, how="inner")  # members no longer in samples drop out
    info = info.with_columns(pl.col(S.ROW_ID).is_in(list(other_drops)).alias("_gone"))
    # keep the smallest row id that is not dropped for another reason, per set and split
    keep = (
        info.filter(~pl.col("_gone"))
        .group_by("set", "split")
        .agg(pl.col(S.ROW_ID).min().alias("_keep"))
    )
    info = info.join(keep, on=["set", "split"], how="left")
    dropped = info.filter(~pl.col("_gone") & (pl.col(S.ROW_ID) != pl.col("_keep")))
    rank = {n: i for i, n in enumerate(names)}
    set_reason: dict = {}
    for s, r in info.select("set", S.ROW_ID).iter_rows():
        reason = flagged_by.get(int(r))
        if reason and rank[reason] < rank.get(set_reason.get(s), len(names)):
            set_reason[s] = reason
    out = []
    for r, s, sp, k in dropped.select(S.ROW_ID, "set", "split", "_keep").iter_rows():
        reason = flagged_by.get(int(r), set_reason.get(s, names[0]))
        out.append(
            {
                S.ROW_ID: int(r),
                "reason": reason,
                "auditor": reason,
                "details": {"kept_row_id": int(k), "split": sp},
            }
        )
    return out


def issue_edits(store, run_id: int, policy: RepairPolicy, rejected: set) -> tuple[list, list, list]:
    """(drop edits, relabel edits, notes) from the flags of run `run_id`, each auditor's flags
    handled by the repair it declares (`RepairAction`) when the policy plans it."""
    drop_splits = set(_split_filter(store, policy))
    drops: dict[int, dict] = {}
    notes: list[str] = []

    def add_drop(row_id: int, reason: str, details: dict) -> None:
        cur = drops.get(row_id)
        if cur is None:
            drops[row_id] = {
                S.ROW_ID: row_id,
                "reason": reason,
                "auditor": reason,
                "details": {**details, "reasons": [reason]},
            }
        elif reason not in cur["details"]["reasons"]:
            cur["details"]["reasons"].append(reason)

    declared = declared_repairs()
    planned = {n: r for n, r in declared.items() if r.action != NO_REPAIR and r.planned(policy)}
    relabels: list[dict] = []
    for name in sorted(planned, key=lambda n: (planned[n].priority, n)):
        rep = planned[name]
        if rep.action == DROP_REPAIR and rep.set_key:
            _plan_set_drop(store, run_id, name, rep, rejected, drop_splits, add_drop)
        elif rep.action == DROP_REPAIR:
            fields = {k: _evidence_sql(k, t) for k, t in rep.evidence.items()}
            fr = _without_rejected(_flags(store, run_id, name, fields), name, rejected)
            for row in fr.iter_rows(named=True):
                if row["split"] in drop_splits:
                    add_drop(int(row[S.ROW_ID]), name, {k: row[k] for k in rep.evidence})
        elif rep.action == RELABEL_REPAIR:
            relabels += _plan_relabels(store, run_id, name, rep, policy, rejected, add_drop)
    keep_one = {n: r for n, r in planned.items() if r.action == KEEP_ONE}
    if keep_one:
        for d in _set_drops(store, run_id, keep_one, set(drops), rejected):
            add_drop(d[S.ROW_ID], d["reason"], d["details"])
    # the reason of lowest declared priority names the edit
    for d in drops.values():
        reasons = sorted(d["details"]["reasons"], key=lambda n: (declared[n].priority, n))
        d["details"]["reasons"] = reasons
        d["reason"] = d["auditor"] = reasons[0]
    relabels = [r for r in relabels if r[S.ROW_ID] not in drops]
    return list(drops.values()), relabels, notes


def _plan_set_drop(store, run_id, name, rep, rejected, drop_splits, add_drop) -> None:
    """A `drop` with a set (leakage): the flagged row and the rows its set names, each dropped
    where it lies in a split the plan drops from."""
    fields = {"partners": _evidence_sql(rep.set_key, "BIGINT[]")}
    fields |= {k: _evidence_sql(k, t) for k, t in rep.evidence.items()}
    fr = _without_rejected(_flags(store, run_id, name, fields), name, rejected)
    if fr.is_empty():
        return
    ev = list(rep.evidence)
    pairs = pl.concat(
        [
            fr.select(pl.col(S.ROW_ID).alias("target"), pl.col(S.ROW_ID).alias("via"), *ev),
            fr.select(pl.col("partners").alias("target"), pl.col(S.ROW_ID).alias("via"), *ev)
            .explode("target")
            .drop_nulls("target"),
        ]
    )
    splits = store.polars(f"SELECT row_id AS target, split FROM {S.SAMPLES}")
    pairs = pairs.join(splits, on="target").filter(pl.col("split").is_in(list(drop_splits)))
    first = pairs.unique("target", keep="first", maintain_order=True)
    for row in first.select("target", "via", *ev).iter_rows(named=True):
        det = {"flagged_row_id": int(row["via"]), **{k: row[k] for k in ev}}
        add_drop(int(row["target"]), name, det)


def _plan_relabels(store, run_id, name, rep, policy, rejected, add_drop) -> list[dict]:
    """A `relabel`: the suggestion where its probability clears `relabel_threshold`; with
    `drop_unconfident_label_issues`, the other flags are dropped."""
    fields = {
        "given": "s.label::VARCHAR",
        "suggested": _evidence_sql(rep.suggestion_key, "VARCHAR"),
        "prob": _evidence_sql(rep.probability_key, "DOUBLE"),
    }
    fr = _without_rejected(_flags(store, run_id, name, fields), name, rejected)
    confident = (
        pl.col("suggested").is_not_null()
        & (pl.col("suggested") != pl.col("given").fill_null(""))
        & (pl.col("prob").fill_null(0.0) >= policy.relabel_threshold)
    )
    out = []
    if policy.relabel:
        for r, given, sugg, prob in (
            fr.filter(confident).select(S.ROW_ID, "given", "suggested", "prob").iter_rows()
        ):
            out.append(
                {
                    S.ROW_ID: int(r),
                    "new_label": sugg,
                    "reason": name,
                    "auditor": name,
                    "details": {"given_label": given, "suggested_label_prob": prob},
                }
            )
    if policy.drop_unconfident_label_issues:
        for r, given, prob in fr.filter(~confident).select(S.ROW_ID, "given", "prob").iter_rows():
            add_drop(int(r), name, {"given_label": given, "suggested_label_prob": prob})
    return out
