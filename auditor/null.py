"""`null`: rows missing what they need, and sparse columns reported as such.

Checked columns are the user's source columns (as ingested, minus datacure's own, and minus the
columns a datacure export added, `S.EXPORT_COLUMNS`, which are null by design on real rows) and
the label. A row is flagged only where the row itself needs a decision:

- its content is missing: the text is null, empty or only whitespace, or the image path is null
  (the row carries nothing to learn from; score 0);
- its label is null in a split where other rows are labelled (an unlabelled test split is not a
  defect);
- it has a null in a column that is otherwise almost always filled: at most `max_null_share`
  (5%) of the audited rows null there.

A column null in more rows than that is an optional, sparse column (a free-text note, an
optional field): it is reported at column level in `info.sparse_columns` (column -> null share)
and flags no row. Score (cleanlab's `null` form over the columns that can flag): 1 - the
fraction of those columns that are null in the row, 0 when the content is missing. `details`:
`null_columns` (every checked column null in the row, sparse ones included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from pydantic import Field

from ..store import schema as S
from .base import DROP, Auditor, AuditResult, Params, RepairAction, register

if TYPE_CHECKING:
    from .context import AuditContext


class NullParams(Params):
    max_null_share: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="a column's nulls flag rows only when at most this share of rows is null "
        "there (more: a sparse optional column, reported at column level)",
    )


def _null_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    expr = col.is_null()
    if dtype == pl.Utf8:
        expr = expr | (col.str.strip_chars() == "")
    elif dtype.is_float():
        expr = expr | col.is_nan()
    return expr


def _null_exprs(ctx: AuditContext, content: str | None) -> dict[str, pl.Expr]:
    """A null test per checked column: the source columns (not the label or export-only ones)
    and the content column, then the label, null only where its split is otherwise labelled."""
    frame = ctx.frame
    d = ctx.definition
    skip = {S.LABEL, *d.names("label", "export")}
    source = [c for c in d.source_columns if c in frame.columns and c not in skip]
    cols = list(dict.fromkeys(source + ([content] if content else [])))
    exprs = {c: _null_expr(c, frame.schema[c]) for c in cols}
    if S.LABEL in frame.columns:
        # a null label is a defect only where the split is otherwise labelled
        labelled_split = pl.col(S.LABEL).is_not_null().any().over(S.SPLIT)
        exprs[S.LABEL] = pl.col(S.LABEL).is_null() & labelled_split
    return exprs


def _null_columns(mask: pl.DataFrame | None, names: list[str], n: int) -> pl.Series:
    """Per row of `n`, the names of its null columns (`mask`: one boolean column per name)."""
    if not names:
        return pl.Series("null_columns", [[] for _ in range(n)], dtype=pl.List(pl.Utf8))
    return mask.select(
        pl.concat_list([pl.when(pl.col(c)).then(pl.lit(c)).otherwise(pl.lit(None)) for c in names])
        .list.drop_nulls()
        .alias("null_columns")
    )["null_columns"]


@register
class NullAuditor(Auditor):
    name = "null"
    details = {"null_columns": pl.List(pl.Utf8)}
    repair = RepairAction(DROP)  # never planned: an accepted flag drops the row
    description = (
        "rows missing their content, their label, or a value of a column almost always filled"
    )
    requires = frozenset()
    Params = NullParams

    def audit(self, ctx: AuditContext) -> AuditResult:
        content = ctx.text_column or (S.IMAGE_PATH if ctx.image_paths is not None else None)
        frame = ctx.frame
        exprs = _null_exprs(ctx, content)
        n = len(frame)
        if exprs:
            mask = frame.select([e.alias(c) for c, e in exprs.items()])
            names = list(mask.columns)
            m = mask.to_numpy().astype(bool).reshape(n, len(names))
        else:
            mask, names, m = None, [], np.zeros((n, 0), dtype=bool)
        share = m.mean(axis=0) if n else np.zeros(len(names))
        # content and label always flag; another column only when it is almost always filled
        always = {content, S.LABEL}
        flagging = np.array(
            [c in always or share[i] <= self.params.max_null_share for i, c in enumerate(names)],
            dtype=bool,
        )
        mf = m[:, flagging]
        frac = mf.sum(axis=1) / max(int(flagging.sum()), 1)
        score = 1.0 - frac
        if content:
            score = np.where(m[:, names.index(content)], 0.0, score)
        is_issue = mf.any(axis=1)
        null_columns = _null_columns(mask, names, n)
        per_col = {c: int(m[:, i].sum()) for i, c in enumerate(names) if m[:, i].any()}
        sparse = {
            c: float(share[i]) for i, c in enumerate(names) if not flagging[i] and m[:, i].any()
        }
        return AuditResult(
            pl.DataFrame(
                {
                    S.ROW_ID: ctx.row_ids,
                    "is_issue": is_issue,
                    "score": np.clip(score, 0.0, 1.0),
                }
            ).with_columns(null_columns),
            score=float(score.mean()) if len(score) else 1.0,
            info={
                "checked_columns": names,
                "null_counts": per_col,
                "sparse_columns": sparse,
                "max_null_share": self.params.max_null_share,
                "flagging_columns": [c for i, c in enumerate(names) if flagging[i]],
                "ignored_export_columns": list(ctx.export_columns),
                "content_column": content,
                "empty_content": per_col.get(content, 0) if content else 0,
            },
        )
