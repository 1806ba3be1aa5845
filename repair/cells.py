"""The effect of a repair plan on each split x label x group cell, and the safety check that
refuses a plan whose drops on audit findings would starve a cell (see repair/plan.py)."""

from __future__ import annotations

import json

import polars as pl

from ..store import schema as S
from ..store.errors import InputError
from .policy import GENERATED, REASON_REBALANCE, RepairPolicy, declared_repairs

# --- effect on cells ------------------------------------------------------------------------------
ALL_ROWS = "(all)"


def cell_rows(store, policy: RepairPolicy) -> pl.DataFrame:
    """row_id, split, label and group of every sample: the cells a plan is judged on. The group
    is the `rebalance_by` column's value (the slice with `slice`), or one group per label."""
    cols = {c for c, _ in store.columns(S.SAMPLES)}
    col = policy.rebalance_by
    if col and col not in (S.LABEL, "slice") and col in cols:
        value = f"coalesce({S.quote(col)}::VARCHAR, '<null>')"
    else:
        value = f"'{ALL_ROWS}'"
    frame = store.polars(
        f"SELECT row_id, split, coalesce(label::VARCHAR, '<null>') AS label, {value} AS grp "
        f"FROM {S.SAMPLES}"
    )
    if col == "slice":
        from ..generators.rebalance import REST, _slice_assignment

        try:
            sl = _slice_assignment(store).rename({"value": "_sl"})
            frame = (
                frame.join(sl, on=S.ROW_ID, how="left")
                .with_columns(pl.col("_sl").fill_null(REST).alias("grp"))
                .drop("_sl")
            )
        except InputError:
            pass
    return frame


def cell_effects(
    cells: pl.DataFrame,
    drops: list[dict],
    relabels: list[dict],
    adds: list[dict],
    gen_split: str = "train",
) -> list[dict]:
    """Per split x label x group cell: rows, rows dropped on audit findings (exact duplicates
    apart: their content stays in the cell), dropped by rebalancing, relabelled away, added
    (copies and generated rows), rows after, and `drop_share` = dropped on findings / rows."""
    rows = _cell_counts(_with_edits(cells, drops, relabels, adds)).to_dicts()
    extra = _generated_per_cell(adds, gen_split)
    for row in rows:
        row["added"] += extra.pop((row["split"], row["label"], row["group"]), 0)
    for (sp, lab, val), n in extra.items():
        rows.append(
            {
                "split": sp,
                "label": lab,
                "group": val,
                "rows": 0,
                "dropped": 0,
                "dropped_exact_duplicate": 0,
                "dropped_rebalance": 0,
                "relabelled": 0,
                "added": n,
            }
        )
    for row in rows:
        gone = row["dropped"] + row["dropped_exact_duplicate"] + row["dropped_rebalance"]
        row["after"] = row["rows"] - gone - row["relabelled"] + row["added"]
        row["drop_share"] = row["dropped"] / row["rows"] if row["rows"] else 0.0
    rows.sort(key=lambda x: (x["split"], x["label"], x["group"]))
    return rows


def _with_edits(cells: pl.DataFrame, drops, relabels, adds) -> pl.DataFrame:
    """`cells` with each row's drop reason (`_reason`), whether it is relabelled (`_rl`) and
    how many copies of it are added (`_n`); generated rows are counted apart."""
    d = pl.DataFrame(
        {
            S.ROW_ID: [int(x[S.ROW_ID]) for x in drops],
            "_reason": [str(x["reason"]) for x in drops],
        },
        schema={S.ROW_ID: pl.Int64, "_reason": pl.Utf8},
    )
    r = pl.DataFrame({S.ROW_ID: [int(x[S.ROW_ID]) for x in relabels]}, schema={S.ROW_ID: pl.Int64})
    copies = [a for a in adds if (a.get("details") or {}).get("kind") != GENERATED]
    c = pl.DataFrame(
        {
            S.ROW_ID: [int(a[S.ROW_ID]) for a in copies],
            "_n": [int((a.get("details") or {}).get("copies", 1)) for a in copies],
        },
        schema={S.ROW_ID: pl.Int64, "_n": pl.Int64},
    )
    return (
        cells.join(d, on=S.ROW_ID, how="left")
        .join(r.with_columns(pl.lit(True).alias("_rl")), on=S.ROW_ID, how="left")
        .join(c.group_by(S.ROW_ID).agg(pl.col("_n").sum()), on=S.ROW_ID, how="left")
    )


def _cell_counts(f: pl.DataFrame) -> pl.DataFrame:
    """The counts of `cell_effects` per split x label x group, before generated rows."""
    dropped = pl.col("_reason").is_not_null()
    kept_content = [n for n, r in declared_repairs().items() if r.keeps_content]
    return (
        f.group_by("split", "label", "grp")
        .agg(
            pl.len().alias("rows"),
            (dropped & ~pl.col("_reason").is_in([*kept_content, REASON_REBALANCE]))
            .sum()
            .alias("dropped"),
            # drops that leave a copy of the content in the cell (declared `keeps_content`)
            pl.col("_reason").is_in(kept_content).sum().alias("dropped_exact_duplicate"),
            (pl.col("_reason") == REASON_REBALANCE).sum().alias("dropped_rebalance"),
            (pl.col("_rl").fill_null(False) & ~dropped).sum().alias("relabelled"),
            pl.col("_n").fill_null(0).sum().alias("added"),
        )
        .rename({"grp": "group"})
    )


def _generated_per_cell(adds: list[dict], gen_split: str) -> dict[tuple, int]:
    """(split, label, group) -> generated rows added, from each one's group key."""
    extra: dict[tuple, int] = {}
    for a in adds:  # one entry per generated row: a handful, parsed from its group key
        det = a.get("details") or {}
        if det.get("kind") != GENERATED:
            continue
        try:
            lab, val = json.loads(det.get("group", "null"))
        except (TypeError, ValueError):
            continue
        key = (gen_split, str(lab), str(val))
        extra[key] = extra.get(key, 0) + 1
    return extra


def check_cells(cells: list[dict], policy: RepairPolicy) -> None:
    """Refuse a plan whose drops on audit findings remove more than `max_cell_drop_share` of a
    cell (a cell may always lose one row), naming the cells and the override."""
    share = policy.max_cell_drop_share
    if share >= 1.0:
        return
    bad = [c for c in cells if c["dropped"] > max(1, share * c["rows"])]
    if not bad:
        return
    bad.sort(key=lambda c: -c["drop_share"])
    listed = "; ".join(
        f"{c['split']} / label {c['label']}"
        + ("" if c["group"] == ALL_ROWS else f" x {c['group']}")
        + f": {c['dropped']} of {c['rows']} rows ({c['drop_share']:.0%})"
        for c in bad[:5]
    )
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise InputError(
        f"the plan would drop more than {share:.0%} of {len(bad)} label x group cell(s) on "
        f"audit findings: {listed}{more}. Dropping that much of a cell usually means a check "
        "misfired on this data, and it starves the cell",
        "look at the flags behind those drops (`datacure issues --auditor NAME`), reject the "
        "wrong ones in a review, or accept the loss with --max-cell-drop-share 1 "
        "(policy key max_cell_drop_share)",
    )
