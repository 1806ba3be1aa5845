"""`label`: rows whose given label is probably wrong.

Two out-of-sample views of each labelled row's class are combined:

1. the model: `ctx.pred_probs`, K-fold cross-validated probabilities (auditor/predict.py) or
   the user's own (`--pred-probs`);
2. the neighbours: the similarity-weighted label vote of the row's k nearest neighbours on the
   shared kNN graph (`knn_class_distribution`; a row never votes for itself).

The combined probabilities are `C = (1 - knn_weight) * pred_probs + knn_weight * vote` (default
an equal average). Confident learning then runs on `C`: cleanlab's `find_label_issues` flags
rows (by default with `filter_by="predicted_neq_given"`, the confident-learning rule that flags a
row whose most likely class is not its given label), and `get_label_quality_scores` gives the
score (default: self-confidence `C[given]`, lower is worse). The kNN vote agrees with the model
where the data is clean and catches errors the linear model has absorbed; averaging two
different predictors ranks errors better than either alone.

cleanlab's default rule `prune_by_noise_rate` (what Datalab uses) is one option away. It
estimates how many rows are wrong from the confident joint, whose per-class thresholds (the mean
self-confidence of each class) are rarely reached by rows whose label is ambiguous rather than
random, so on real human label noise it flags a small fraction of the errors; the estimate is
still reported in `info.cl_estimated_issues`.

Only labelled rows are audited. `details` holds `given_label`, `suggested_label` (the most likely
class under `C`, original label values) and `suggested_label_prob`, plus `pred_prob_given` (the
model's probability of the given label) and `knn_agreement` (the neighbours' vote for it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl
from pydantic import Field

from .base import Auditor, AuditResult, Params, Requires, register
from .predict import knn_class_distribution

if TYPE_CHECKING:
    from .context import AuditContext

FilterBy = Literal[
    "predicted_neq_given",
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "low_normalized_margin",
    "low_self_confidence",
]


class LabelParams(Params):
    k: int | None = Field(None, ge=1, description="neighbours in the vote (default: the run's k)")
    knn_weight: float = Field(
        0.5, ge=0, le=1, description="weight of the neighbours' vote against pred_probs"
    )
    filter_by: FilterBy = Field(
        "predicted_neq_given", description="cleanlab find_label_issues rule applied to C"
    )
    score_method: Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"] = (
        "self_confidence"
    )


def _label_values(classes: list, codes: np.ndarray) -> pl.Series:
    """Original label values for codes, keeping the label column's type."""
    return pl.Series(classes)[codes] if len(codes) else pl.Series(classes[:0])


@register
class LabelAuditor(Auditor):
    name = "label"
    description = "rows whose given label is probably wrong (confident learning + kNN vote)"
    requires = frozenset({Requires.LABELS, Requires.PRED_PROBS})
    Params = LabelParams

    def audit(self, ctx: AuditContext) -> AuditResult:
        from cleanlab.count import num_label_issues
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        k = len(ctx.classes)
        lab = np.flatnonzero(ctx.labelled)
        y = ctx.labels[lab]
        model = np.asarray(ctx.pred_probs, dtype=np.float64)[lab]
        w = self.params.knn_weight
        if w > 0 and ctx.missing(frozenset({Requires.EMBEDDINGS})) is not None:
            w = 0.0  # user pred_probs without embeddings: the model's view alone
        if w > 0:
            graph = ctx.knn(self.params.k)
            vote = knn_class_distribution(graph.indices, graph.distances, ctx.labels, k)[lab]
            combined = (1.0 - w) * model + w * vote
            graph_k = graph.k
        else:
            vote = None
            combined = model
            graph_k = 0
        combined = combined / combined.sum(axis=1, keepdims=True)
        rows = np.arange(len(y))
        if self.params.filter_by == "predicted_neq_given":
            # cleanlab's rule, computed directly: its implementation is this comparison
            is_issue = combined.argmax(axis=1) != y
        else:
            is_issue = np.asarray(
                find_label_issues(y, combined, filter_by=self.params.filter_by, n_jobs=1),
                dtype=bool,
            )
        score = get_label_quality_scores(y, combined, method=self.params.score_method)
        try:
            cl_estimate = int(num_label_issues(y, combined))
        except ValueError:  # too few rows per class for the confident joint
            cl_estimate = None
        suggested = combined.argmax(axis=1)
        frame = pl.DataFrame(
            {
                "row_id": ctx.row_ids[lab],
                "is_issue": is_issue,
                "score": np.clip(score, 0.0, 1.0),
                "given_label": _label_values(ctx.classes, y),
                "suggested_label": _label_values(ctx.classes, suggested),
                "suggested_label_prob": combined[rows, suggested],
                "pred_prob_given": model[rows, y],
                "knn_agreement": vote[rows, y] if vote is not None else np.full(len(y), np.nan),
            }
        )
        if vote is None:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("knn_agreement"))
        share = float(is_issue.mean()) if len(y) else 0.0
        per_class = {str(c): int(is_issue[y == i].sum()) for i, c in enumerate(ctx.classes)}
        return AuditResult(
            frame,
            score=1.0 - share,
            info={
                "filter_by": self.params.filter_by,
                "knn_weight": w,
                "k": graph_k,
                "num_labelled": len(y),
                "flagged_by_given_label": per_class,
                "cl_estimated_issues": cl_estimate,
                "model_accuracy": float((model.argmax(axis=1) == y).mean()) if len(y) else None,
                "knn_accuracy": float((vote.argmax(axis=1) == y).mean())
                if vote is not None and len(y)
                else None,
                "pred_probs": ctx.pred_probs_label,
            },
        )
