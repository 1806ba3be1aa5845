"""Rebalance groups of one split: undersample, oversample, or generate the missing samples.

Groups are label x COLUMN (`--rebalance-by COLUMN`; with `--rebalance-by label` the groups are the
labels; with `--rebalance-by slice` each row is assigned the slice of the latest audit with the
highest error rate that contains it, or `rest`). Counts are taken on the split as the plan leaves
it (drops of this plan and accepted drops removed, relabels applied, accepted additions counted).

Targets, with `ratio` r in (0, 1] (default 1, every group equal):
- undersample: a group keeps at most max(ceil(smallest / r), `min_group_rows`) rows (random,
  seeded): the floor (default 20) keeps enough rows to learn from, and a note says when it wins
  over the smallest group;
- oversample and generate: a group is filled up to ceil(r * largest) rows, with at most
  `max_copies` (default 30) copies of any one real row; a group the cap leaves short stays
  short, and a note says so.
So, unless the floor or the cap wins, after rebalancing the smallest group is at least r times
the largest. A copy keeps its original's row id (`datacure_row_id` in the export), so a re-audit
of the export knows it for a recorded copy, not a duplicate.

`generate` asks the generator of the store's modality for new samples of each short group (text:
counterfactual edits of rows of the same label and another group; images: the built-in
class-and-group-conditional diffusion model or a local diffusers pipeline), keeps those the
verifier accepts (label, and group where the group is predictable, with a margin; no
near-duplicates), and fills what is still missing by oversampling, saying so. Only
`synthetic_share` (default 0.5) of each group's gap is generated; the rest are copies of the
group's real rows, so no group is synthetic alone (a group with no real rows is all generated).
Under `generate` every label x value combination counts as a group, even one with no rows yet.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from ..store import schema as S
from ..store.errors import DatacureError, InputError

if TYPE_CHECKING:  # the policy's type only: generators import nothing from repair/
    from ..repair.policy import RepairPolicy

MAX_GROUP_VALUES = 64
NULL_VALUE = "<null>"
REST = "rest"
REASON = "rebalance"


@dataclass
class RebalancePlan:
    drops: list[dict] = field(default_factory=list)
    adds: list[dict] = field(default_factory=list)
    generated: pl.DataFrame | None = None
    stats: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    targets: dict = field(default_factory=dict)  # group key -> (count before, target)


def group_key(label, value) -> str:
    return json.dumps([str(label), str(value)], ensure_ascii=False)


def group_frame(
    store,
    policy: RepairPolicy,
    dropped: set[int] | None = None,
    relabels: dict | None = None,
) -> tuple[pl.DataFrame, str]:
    """The rows of the rebalanced split as the plan leaves them:
    (frame with row_id, label (str), value (str), plus text / image_path, kind of column)."""
    split = policy.rebalance_split
    if split not in store.splits():
        raise InputError(
            f"split {split!r} (rebalance_split) is not in the store",
            f"choose one of {', '.join(store.splits())}",
        )
    column = policy.rebalance_by
    kind, select = _group_select(store, column)
    frame = store.polars(
        f"SELECT {select} FROM {S.SAMPLES} WHERE split = ? ORDER BY row_id",
        [split],
    )
    if dropped:
        frame = frame.filter(~pl.col(S.ROW_ID).is_in(list(dropped)))
    if relabels:
        frame = _relabelled(frame, relabels, kind)
    if kind == "slice":
        frame = frame.drop("value").join(_slice_assignment(store), on=S.ROW_ID, how="left")
        frame = frame.with_columns(pl.col("value").fill_null(REST))
    frame = frame.filter(pl.col("label").is_not_null())
    frame = frame.with_columns(pl.col("value").fill_null(NULL_VALUE))
    nvals = frame["value"].n_unique()
    if nvals > MAX_GROUP_VALUES:
        raise InputError(
            f"--rebalance-by {column!r} has {nvals} distinct values in split {split!r}",
            f"rebalance by a column with at most {MAX_GROUP_VALUES} values (bin it first)",
        )
    return frame, kind


def _group_select(store, column: str) -> tuple[str, str]:
    """The kind of `column` (slice, label or column) and the SELECT list of group_frame: row_id,
    label and value as text, plus the text (`_text`) and image path (`_image`) when present."""
    cols = [c for c, _ in store.columns(S.SAMPLES)]
    text_col = store.text_column()
    extra = []
    if text_col and text_col in cols:
        extra.append(f"{S.quote(text_col)}::VARCHAR AS _text")
    if S.IMAGE_PATH in cols:
        extra.append(f"{S.IMAGE_PATH} AS _image")
    extra_sql = "".join(", " + e for e in extra)
    if column == "slice":
        kind = "slice"
        value_sql = "NULL::VARCHAR"
    elif column == S.LABEL:
        kind = "label"
        value_sql = "label::VARCHAR"
    elif column in cols:
        kind = "column"
        value_sql = f"{S.quote(column)}::VARCHAR"
    else:
        raise InputError(
            f"--rebalance-by {column!r} is not a column of the samples",
            "choose one of: "
            + ", ".join(c for c in cols if not c.startswith("_"))
            + ", or 'slice'",
        )
    return kind, f"row_id, label::VARCHAR AS label, {value_sql} AS value{extra_sql}"


def _relabelled(frame: pl.DataFrame, relabels: dict, kind: str) -> pl.DataFrame:
    """`frame` with the planned relabels {row_id: new label} applied (to the value too when
    the groups are the labels)."""
    rl = pl.DataFrame(
        {S.ROW_ID: list(relabels), "_new": [str(v) for v in relabels.values()]},
        schema={S.ROW_ID: pl.Int64, "_new": pl.Utf8},
    )
    frame = (
        frame.join(rl, on=S.ROW_ID, how="left")
        .with_columns(pl.coalesce("_new", "label").alias("label"))
        .drop("_new")
    )
    if kind == "label":
        frame = frame.with_columns(pl.col("label").alias("value"))
    return frame


def _slice_assignment(store) -> pl.DataFrame:
    run_id = store.latest_run_id()
    sl = (
        store.polars(
            f"SELECT slice_id, members, error_rate, size FROM {S.SLICES} WHERE run_id = ?", [run_id]
        )
        if run_id is not None
        else pl.DataFrame()
    )
    if sl.is_empty():
        raise InputError(
            "--rebalance-by slice needs discovered slices, and the latest audit found none",
            "run `datacure audit` with the slice auditor, or rebalance by a column",
        )
    # a row in several slices goes to the one with the highest error rate (then the smallest)
    sl = sl.sort(["error_rate", "size"], descending=[True, False], nulls_last=True)
    return (
        sl.explode("members")
        .select(pl.col("members").alias(S.ROW_ID), pl.col("slice_id").cast(pl.Utf8).alias("value"))
        .unique(S.ROW_ID, keep="first", maintain_order=True)
    )


def _extra_counts(store, kept_adds: pl.DataFrame | None, frame: pl.DataFrame) -> dict[str, int]:
    """Rows that accepted additions of earlier plans add to each group."""
    if kept_adds is None or kept_adds.is_empty():
        return {}
    det = kept_adds.with_columns(
        pl.col("details").str.json_path_match("$.group").alias("_g"),
        pl.col("details").str.json_path_match("$.copies").cast(pl.Int64).fill_null(1).alias("_c"),
    )
    out: dict[str, int] = {}
    for g, c in det.select("_g", "_c").iter_rows():
        if g:
            out[g] = out.get(g, 0) + int(c)
    return out


def compute_targets(
    counts: dict[str, int],
    strategy: str,
    ratio: float,
    min_rows: int = 1,
    max_copies: int | None = None,
) -> dict[str, int]:
    """Target size per group (see the module docstring): undersampling keeps at least
    `min_rows` rows of a group (or all it has); oversampling adds at most `max_copies` copies
    of each real row (a group of n rows reaches at most n * (1 + max_copies))."""
    nonzero = [c for c in counts.values() if c > 0]
    if not nonzero:
        return dict(counts)
    if strategy == "undersample":
        cap = max(math.ceil(min(nonzero) / ratio), min_rows)
        return {g: min(c, cap) for g, c in counts.items()}
    floor = math.ceil(ratio * max(nonzero))
    out = {g: max(c, floor) for g, c in counts.items()}
    if max_copies is not None and strategy == "oversample":
        out = {g: min(t, counts[g] * (1 + max_copies)) if counts[g] else t for g, t in out.items()}
    return out


def plan_rebalance(
    store,
    policy: RepairPolicy,
    dropped: set[int] | None = None,
    relabels: dict | None = None,
    kept_adds: pl.DataFrame | None = None,
    plan_id: int = 0,
    progress=None,
    embedder=None,
) -> RebalancePlan:
    """Edits (drops, copies, generated rows) that bring the groups to their targets."""
    frame, kind = group_frame(store, policy, dropped, relabels)
    plan = RebalancePlan()
    if frame.is_empty():
        plan.notes.append(f"split {policy.rebalance_split!r} has no labelled rows to rebalance")
        return plan
    frame = with_group_keys(frame)
    counts = _group_counts(store, policy, frame, kind, kept_adds, plan)
    targets = compute_targets(
        counts, policy.strategy, policy.ratio, policy.min_group_rows, policy.max_copies
    )
    plan.targets = {g: (counts[g], targets[g]) for g in counts}
    _note_targets(policy, counts, targets, plan)
    rng = np.random.default_rng(policy.seed)
    frame = frame.with_columns(pl.Series("_r", rng.random(len(frame))))
    frame = frame.with_columns(pl.col("_r").rank("ordinal").over("group").alias("_rank") - 1)
    size = frame.group_by("group").len().rename({"len": "_n"})
    frame = frame.join(size, on="group", how="left")
    if policy.strategy == "undersample":
        cap = pl.DataFrame({"group": list(targets), "_t": list(targets.values())})
        gone = frame.join(cap, on="group").filter(pl.col("_rank") >= pl.col("_t"))
        plan.drops = [
            {
                S.ROW_ID: int(r),
                "reason": REASON,
                "auditor": REASON,
                "details": {"group": g, "strategy": "undersample", "target": int(t)},
            }
            for r, g, t in gone.select(S.ROW_ID, "group", "_t").iter_rows()
        ]
        return plan
    need = {g: targets[g] - counts[g] for g in counts if targets[g] > counts[g]}
    if policy.strategy == "generate" and need:
        need = _generate_into(store, policy, frame, kind, need, plan, plan_id, progress, embedder)
    adds = _oversample(frame, need, targets, policy.strategy, policy.max_copies)
    plan.adds += adds
    if policy.strategy == "generate":
        _note_generate_copies(policy, frame, need, adds, plan)
    cant = [g for g in need if g not in set(frame["group"].to_list())]
    if cant:
        plan.notes.append(f"groups with no rows to copy stay short: {', '.join(cant)}")
    return plan


def _group_counts(store, policy: RepairPolicy, frame, kind: str, kept_adds, plan) -> dict:
    """Rows per group, with the rows earlier adds keep; for `generate`, every label (x value)
    group of the grid, empty ones at 0. Empty groups are noted on the plan."""
    counts = dict(frame.group_by("group").len().iter_rows())
    for g, c in _extra_counts(store, kept_adds, frame).items():
        counts[g] = counts.get(g, 0) + c
    if policy.strategy == "generate":
        labels = sorted(frame["label"].unique().to_list())
        values = sorted(frame["value"].unique().to_list())
        if kind == "label":
            grid = [group_key(y, y) for y in labels]
        else:
            grid = [group_key(y, v) for y in labels for v in values]
        empty = [g for g in grid if g not in counts]
        for g in grid:
            counts.setdefault(g, 0)
        if empty:
            plan.notes.append(
                f"{len(empty)} label x {policy.rebalance_by} groups have no rows yet; "
                "generate will try to create them: " + ", ".join(empty[:6])
            )
    elif empty := [g for g, c in counts.items() if c == 0]:
        plan.notes.append(f"groups with no rows cannot be {policy.strategy}d: {', '.join(empty)}")
    return counts


def _note_targets(policy: RepairPolicy, counts: dict, targets: dict, plan) -> None:
    """Note where a target falls short of equal groups: the undersample floor
    (`min_group_rows`) above the smallest group's allowance, or oversampled groups capped by
    `max_copies`."""
    nonzero = [c for c in counts.values() if c > 0]
    if policy.strategy == "undersample" and nonzero:
        plain = math.ceil(min(nonzero) / policy.ratio)
        if policy.min_group_rows > plain:
            plan.notes.append(
                f"undersample floor: groups keep at least {policy.min_group_rows} rows "
                f"(min_group_rows), not the {plain} the smallest group allows; the floor wins, "
                f"so groups stay unequal (smallest {min(nonzero)}, largest kept "
                f"{max(targets.values())})"
            )
    if policy.strategy == "oversample":
        capped = {
            g: (counts[g], targets[g])
            for g in counts
            if counts[g]
            and targets[g] == counts[g] * (1 + policy.max_copies)
            and targets[g] < math.ceil(policy.ratio * max(nonzero))
        }
        if capped:
            listed = ", ".join(f"{g}: {n} -> {t}" for g, (n, t) in sorted(capped.items())[:6])
            plan.notes.append(
                f"{len(capped)} groups stay short of their target: at most {policy.max_copies} "
                f"copies of one row (max_copies) ({listed})"
            )


def _generate_into(store, policy, frame, kind, need: dict, plan, plan_id, progress, embedder):
    """Generate `synthetic_share` of each gap (all of it for a group with no rows) into the
    plan; returns the gaps left for copies of the groups' real rows."""
    from .generate import fill_groups

    has_rows = set(frame["group"].to_list())
    share = policy.synthetic_share
    to_make = {g: n if g not in has_rows else math.ceil(share * n) for g, n in need.items()}
    filled = fill_groups(store, policy, frame, kind, to_make, plan_id, progress, embedder)
    plan.generated = filled.generated
    plan.adds += filled.adds
    plan.stats = filled.stats
    plan.notes += filled.notes
    short = {g: n - filled.made.get(g, 0) for g, n in to_make.items()}
    short = {g: n for g, n in short.items() if n > 0}
    for g, n in filled.made.items():
        need[g] -= n
    need = {g: n for g, n in need.items() if n > 0}
    if short:
        listed = ", ".join(f"{g}: {n}" for g, n in sorted(short.items())[:8])
        plan.notes.append(
            f"generation left {sum(short.values())} samples missing in {len(short)} groups; "
            f"filled them by oversampling ({listed})"
        )
    return need


def _note_generate_copies(policy: RepairPolicy, frame, need: dict, adds: list, plan) -> None:
    """Note the gaps of `generate` filled by copies of real rows, and those left short."""
    got: dict[str, int] = {}
    for a in adds:
        got[a["details"]["group"]] = got.get(a["details"]["group"], 0) + a["details"]["copies"]
    if policy.synthetic_share < 1 and sum(got.values()):
        plan.notes.append(
            f"{sum(got.values())} samples of the short groups filled by oversampling their "
            f"real rows, by design (synthetic_share {policy.synthetic_share:g}: "
            "synthetic-only groups are a shortcut too)"
        )
    left = {g: n - got.get(g, 0) for g, n in need.items() if g in set(frame["group"])}
    left = {g: n for g, n in left.items() if n > 0}
    if left:
        plan.notes.append(
            f"{sum(left.values())} copies not made in {len(left)} groups: at most "
            f"{policy.max_copies} copies of one row (max_copies); those groups stay short"
        )


def with_group_keys(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with a `group` column: `group_key(label, value)`, computed once per distinct
    pair (a handful) and joined back, so a key is built one way only."""
    pairs = frame.select("label", "value").unique()
    keys = [group_key(y, v) for y, v in pairs.iter_rows()]
    pairs = pairs.with_columns(pl.Series("group", keys, dtype=pl.Utf8))
    return frame.join(pairs, on=["label", "value"], how="left", maintain_order="left")


def _oversample(
    frame: pl.DataFrame,
    need: dict[str, int],
    targets: dict,
    strategy: str,
    max_copies: int | None = None,
) -> list:
    """Copies of random rows of each short group: every row gets need // n copies and a random
    need % n of them one more, at most `max_copies` per row."""
    if not need:
        return []
    nd = pl.DataFrame({"group": list(need), "_need": list(need.values())})
    copies = (pl.col("_need") // pl.col("_n")) + (
        pl.col("_rank") < (pl.col("_need") % pl.col("_n"))
    ).cast(pl.Int64)
    if max_copies is not None:
        copies = pl.min_horizontal(copies, pl.lit(max_copies))
    fr = (
        frame.join(nd, on="group", how="inner")
        .with_columns(copies.alias("copies"))
        .filter(pl.col("copies") > 0)
    )
    return [
        {
            S.ROW_ID: int(r),
            "action": S.EDIT_ADD,
            "reason": REASON,
            "auditor": REASON,
            "details": {
                "kind": S.ADD_OVERSAMPLE,
                "copies": int(c),
                "group": g,
                "strategy": strategy,
                "target": int(targets[g]),
            },
        }
        for r, g, c in fr.select(S.ROW_ID, "group", "copies").iter_rows()
    ]


def generated_adds(generated: pl.DataFrame, strategy: str, targets: dict) -> list[dict]:
    """`add` edits for the verified generated rows."""
    kept = generated.filter(pl.col("verified") & pl.col(S.ROW_ID).is_not_null())
    return [
        {
            S.ROW_ID: int(r),
            "action": S.EDIT_ADD,
            "reason": REASON,
            "auditor": REASON,
            "details": {
                "kind": S.ADD_GENERATED,
                "copies": 1,
                "group": g,
                "strategy": strategy,
                "generator": gen,
                "backend": be,
                "target": int(targets.get(g, 0)),
            },
        }
        for r, g, gen, be in kept.select(S.ROW_ID, "group_key", "generator", "backend").iter_rows()
    ]


class GenerationUnavailable(DatacureError):
    """No generator can serve a request (the caller falls back to oversampling)."""
