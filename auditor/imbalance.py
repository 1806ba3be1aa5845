"""`class_imbalance`: classes far rarer than a balanced share (a finding; no row flags).

With `K` classes among the labelled audited rows and `p_c` the share of class `c`, a row of class
`c` scores `min(1, p_c * K)`: 1 for a class at or above its balanced share 1/K, towards 0 for a
vanishing class. A class is flagged when `p_c < threshold / K` (cleanlab's rule with its default
threshold 0.1; cleanlab flags only the rarest class, this names every class under the line) and
listed in `info.flagged_classes`. Imbalance is a fact about the data set, not a decision about
any one row (no row of a rare class is wrong for being rare; the remedy, rebalancing, acts on
the class), so no row is flagged: `is_issue` is always false, and each row keeps its class's
score and `class_share`. The dataset score is the rarest class's score. Unlabelled rows get no
row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from ..store import schema as S
from .base import FINDING, Auditor, AuditResult, Params, Requires, register

if TYPE_CHECKING:
    from .context import AuditContext


class ImbalanceParams(Params):
    threshold: float = Field(
        0.1, gt=0, le=1, description="flag classes whose share is below threshold / num_classes"
    )


@register
class ClassImbalanceAuditor(Auditor):
    name = "class_imbalance"
    kind = FINDING
    description = "classes much rarer than a balanced share (a finding: no row flags)"
    requires = frozenset({Requires.LABELS})
    Params = ImbalanceParams

    def audit(self, ctx: AuditContext) -> AuditResult:
        lab = ctx.labelled
        y = ctx.labels[lab]
        k = len(ctx.classes)
        counts = np.bincount(y, minlength=k)
        share = counts / max(len(y), 1)
        class_score = np.minimum(1.0, share * k)
        flagged = share < self.params.threshold / k
        rarest = int(np.argmin(share))
        return AuditResult(
            {
                S.ROW_ID: ctx.row_ids[lab],
                "is_issue": np.zeros(len(y), dtype=bool),  # a finding: no row decision
                "score": class_score[y],
                "label": np.array([str(c) for c in ctx.classes], dtype=object)[y].astype(str),
                "class_share": share[y],
                "class_flagged": flagged[y],
            },
            score=float(class_score[rarest]),
            info={
                "threshold": self.params.threshold,
                "num_classes": k,
                "class_counts": {str(c): int(n) for c, n in zip(ctx.classes, counts)},
                "rarest_class": str(ctx.classes[rarest]),
                "rarest_share": float(share[rarest]),
                "flagged_classes": [str(c) for c, f in zip(ctx.classes, flagged) if f],
            },
        )
