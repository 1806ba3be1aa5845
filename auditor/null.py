"""`null`: rows with missing values in their source columns, or with empty content.

Checked columns are the user's source columns (as ingested, minus datacure's own) and the label:
a null label counts only in a split where other rows are labelled (an unlabelled test split is
not a defect). A text that is empty or only whitespace counts as null, and so does a missing
image path. Score (cleanlab's `null` form): 1 - the fraction of checked columns that are null,
and 0 when the text or image itself is missing (the row carries nothing to learn from).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from ..store import schema as S
from .base import Auditor, AuditResult, Params, register

if TYPE_CHECKING:
    from .context import AuditContext


class NullParams(Params):
    pass


def _null_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    expr = col.is_null()
    if dtype == pl.Utf8:
        expr = expr | (col.str.strip_chars() == "")
    elif dtype.is_float():
        expr = expr | col.is_nan()
    return expr


@register
class NullAuditor(Auditor):
    name = "null"
    description = "rows with missing values in source columns, or empty text"
    requires = frozenset()
    Params = NullParams

    def audit(self, ctx: AuditContext) -> AuditResult:
        frame = ctx.frame
        content = ctx.text_column or (S.IMAGE_PATH if ctx.image_paths is not None else None)
        skip = {S.ROW_ID, S.SPLIT, S.LABEL, S.IMAGE_PATH}
        skip |= set(ctx.store.meta_get("label_source_columns", []))
        source = [c for c in ctx.store.source_columns() if c in frame.columns and c not in skip]
        cols = list(dict.fromkeys(source + ([content] if content else [])))
        exprs = {c: _null_expr(c, frame.schema[c]) for c in cols}
        if S.LABEL in frame.columns:
            # a null label is a defect only where the split is otherwise labelled
            labelled_split = pl.col(S.LABEL).is_not_null().any().over(S.SPLIT)
            exprs[S.LABEL] = pl.col(S.LABEL).is_null() & labelled_split
        if not exprs:
            mask = pl.DataFrame({"_": np.zeros(len(frame), dtype=bool)})
        else:
            mask = frame.select([e.alias(c) for c, e in exprs.items()])
        names = list(mask.columns) if exprs else []
        m = mask.to_numpy().astype(bool) if exprs else np.zeros((len(frame), 0), dtype=bool)
        n_checked = max(len(names), 1)
        frac = m.sum(axis=1) / n_checked
        score = 1.0 - frac
        if content:
            score = np.where(m[:, names.index(content)], 0.0, score)
        is_issue = m.any(axis=1)
        null_columns = (
            mask.select(
                pl.concat_list(
                    [pl.when(pl.col(c)).then(pl.lit(c)).otherwise(pl.lit(None)) for c in names]
                )
                .list.drop_nulls()
                .alias("null_columns")
            )["null_columns"]
            if names
            else pl.Series("null_columns", [[] for _ in range(len(frame))], dtype=pl.List(pl.Utf8))
        )
        per_col = {c: int(m[:, i].sum()) for i, c in enumerate(names) if m[:, i].any()}
        return AuditResult(
            pl.DataFrame(
                {
                    "row_id": ctx.row_ids,
                    "is_issue": is_issue,
                    "score": np.clip(score, 0.0, 1.0),
                }
            ).with_columns(null_columns),
            score=float(score.mean()) if len(score) else 1.0,
            info={
                "checked_columns": names,
                "null_counts": per_col,
                "content_column": content,
                "empty_content": per_col.get(content, 0) if content else 0,
            },
        )
