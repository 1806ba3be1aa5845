"""`outlier`: rows far from their nearest neighbours in embedding space.

The score is cleanlab's kNN outlier score (`OutlierIssueManager` on features), computed on the
shared kNN graph instead of a second sklearn search: with `d` the mean cosine distance of a row
to its `k` nearest neighbours and `scale` the median of `d` over the audited rows,
`score = exp(-d / scale)`, so a typical row scores about exp(-1) = 0.37 and a far-away one
tends to 0. A row is flagged when `d > Q3 + (1 / threshold - 1) * IQR` of `d` (cleanlab's
default threshold 0.37037 gives Q3 + 1.7 IQR).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from pydantic import Field

from ..store import schema as S
from .base import (
    DROP,
    Auditor,
    AuditResult,
    Params,
    RepairAction,
    Requires,
    register,
)

if TYPE_CHECKING:
    from .context import AuditContext


class OutlierParams(Params):
    k: int | None = Field(None, ge=1, description="neighbours averaged (default: the run's k)")
    threshold: float = Field(
        0.37037, gt=0, le=1, description="flag when mean distance > Q3 + (1/threshold - 1) IQR"
    )


@register
class OutlierAuditor(Auditor):
    name = "outlier"
    details = {"mean_distance": pl.Float64}
    repair = RepairAction(
        DROP,
        planned=lambda p: p.drop_outliers,
        evidence={"mean_distance": "DOUBLE"},
        priority=50,
    )
    description = "rows far from their nearest neighbours (cleanlab's kNN outlier score)"
    requires = frozenset({Requires.EMBEDDINGS})
    Params = OutlierParams

    def skip_reason(self, ctx: AuditContext) -> str | None:
        return "needs at least 3 rows" if ctx.n < 3 else None

    def audit(self, ctx: AuditContext) -> AuditResult:
        graph = ctx.knn(self.params.k)
        dist = graph.distances.astype(np.float64)
        mean = np.where(graph.indices >= 0, dist, np.nan)
        mean = np.nan_to_num(np.nanmean(mean, axis=1), nan=0.0)
        scale = max(float(np.median(mean)), 100 * np.finfo(np.float64).eps)
        score = np.exp(-mean / scale)
        q1, q3 = np.percentile(mean, [25, 75])
        iqr_scale = 1.0 / self.params.threshold - 1.0
        cut = float(q3 + iqr_scale * (q3 - q1))
        is_issue = mean > cut
        return AuditResult(
            {
                S.ROW_ID: ctx.row_ids,
                "is_issue": is_issue,
                "score": np.clip(score, 0.0, 1.0),
                "mean_distance": mean.astype(np.float32),
            },
            score=float(score.mean()),
            info={
                "k": graph.k,
                "metric": "cosine",
                "scale": scale,
                "threshold": self.params.threshold,
                "issue_distance": cut,
                "index_kind": graph.index_kind,
            },
        )
