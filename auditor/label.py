"""`label`: rows whose given label is probably wrong.

Views. Each labelled row gets out-of-sample views of its class: the model's `ctx.pred_probs`
(K-fold cross-validated on the embeddings, auditor/predict.py, or the user's own with
`--pred-probs`), the similarity-weighted label vote of its k nearest neighbours on the shared kNN
graph (a row never votes for itself), and, in a store with a text column, a TF-IDF naive Bayes
model of the text on the same folds (`text_views`). They are stacked into one distribution
`C = softmax(sum_v w_v log p_v)`, the weights (and the naive Bayes smoothing) fitted by
minimising the log-loss against the given labels (`fit_log_pool`): the data decide how much each
view counts, including a negative weight for a view that points away from the given labels.
`knn_weight` set to a number replaces the fit by the fixed average of the model and the vote
(0: the model alone, used as given); `text_view: false` leaves the text out.

Score. `score` is cleanlab's label quality score of the given label under `C` (`score_method`,
default self-confidence `C[given]`), lower is worse; it ranks the rows.

Flags (`filter_by: expected_f1`, the default): how many of the lowest-scored rows to flag is
chosen from the data's own noise estimate.

1. The confident joint of the given labels and `C` (Northcutt et al., 2021; cleanlab's
   calibrated `estimate_joint`) estimates `T[i, j] = P(given i | true j)`: each class's noise
   rate and where its wrong labels go. How accurate the views are enters through how many rows
   are confidently counted.
2. The views are stacked again with `T` as a noisy channel between the true class and the given
   label (forward correction: P(given | x) = T t(x)), which gives `t(x)`, the estimated
   distribution of the true class, and each row's probability that its label `g` is wrong,
   `q = 1 - T[g, g] t_g(x) / (T t(x))_g`.
3. Rows are flagged in score order up to the cut `m` that maximises the expected F1 of the
   flagged set, `2 * sum(q of the m flagged) / (m + sum(q))`. With strong views and random
   flips a few rows carry most of the expected errors and the cut lands near their number; with
   weak views the expected errors are spread thin and the cut widens, because a wider net is
   the better bet there.

`noise_model: annotator` replaces step 2 by `q = 1 - C_g`: the given label is read as one
annotator's draw from the class distribution, wrong as often as another draw would differ.
Human labels of ambiguous items behave that way; random flips do not, and one labelling does
not tell the two apart (bench/label_quality.py measures both rules on both kinds of noise), so
it is the user's call. `filter_by` also takes cleanlab's `find_label_issues` rules
(`predicted_neq_given`: the row's most likely class under `C` is not its label;
`prune_by_noise_rate`, Datalab's default; ...), applied to `C`.

Only labelled rows are audited. `details` holds `given_label`, `suggested_label` (the most likely
true class under `t`, original label values), `suggested_label_prob`, `error_prob` (`q`),
`pred_prob_given` (the model's probability of the given label) and `knn_agreement` (the
neighbours' vote for it). `info` has the view weights, each view's and `C`'s accuracy on the
given labels, the estimated noise rate and number of errors, and the cut's expected F1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl
from pydantic import Field

from .base import (
    RELABEL,
    Auditor,
    AuditResult,
    Params,
    RepairAction,
    Requires,
    register,
)
from .predict import fit_log_pool, knn_class_distribution, log_pool, text_views

if TYPE_CHECKING:
    from .context import AuditContext

FilterBy = Literal[
    "expected_f1",
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
    knn_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="fixed weight of the neighbours' vote against pred_probs (default: fitted)",
    )
    text_view: bool = Field(True, description="stack a TF-IDF view of the text column")
    filter_by: FilterBy = Field(
        "expected_f1",
        description="expected_f1 (the cut that maximises the expected F1) or a cleanlab "
        "find_label_issues rule, applied to the stacked probabilities",
    )
    noise_model: Literal["class_conditional", "annotator"] = Field(
        "class_conditional",
        description="how a wrong label arises, for expected_f1: at random per class (confident "
        "joint) or as an annotator's draw from the class distribution",
    )
    score_method: Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"] = (
        "self_confidence"
    )


def _label_values(classes: list, codes: np.ndarray) -> pl.Series:
    """Original label values for codes, keeping the label column's type."""
    return pl.Series(classes)[codes] if len(codes) else pl.Series(classes[:0])


def noise_matrix(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, joint): T[i, j] = P(given label i | true class j) and the joint P(given i, true j),
    from cleanlab's calibrated confident joint. A class with no confidently counted row keeps an
    identity column (it is assumed clean)."""
    from cleanlab.count import estimate_joint

    joint = np.asarray(estimate_joint(labels, probs), dtype=np.float64)  # [given, true]
    t = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-12)
    empty = joint.sum(axis=0) <= 0
    t[:, empty] = np.eye(len(t))[:, empty]
    return t, joint


def error_probability(labels: np.ndarray, clean: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """P(given label wrong | x, given) = 1 - T[g, g] t_g / (T t)_g for true-class
    distributions `clean` (t, [n, k]) and the noisy channel `noise` (T)."""
    rows = np.arange(len(labels))
    given = (noise[labels] * clean).sum(axis=1)  # P(given | x) = sum_j T[g, j] t_j
    right = noise[labels, labels] * clean[rows, labels]
    return np.clip(1.0 - right / np.maximum(given, 1e-300), 0.0, 1.0)


def expected_f1_cut(score: np.ndarray, q: np.ndarray) -> tuple[int, float]:
    """(m, expected F1): flagging the m lowest-scored rows maximises the expected F1
    2 * sum(q of the flagged) / (m + sum(q)) when row i is wrong with probability q[i]."""
    total = float(q.sum())
    if len(q) == 0 or total <= 0.0:
        return 0, 0.0
    order = np.argsort(score, kind="stable")
    f1 = 2.0 * np.cumsum(q[order]) / (np.arange(1, len(q) + 1) + total)
    m = int(np.argmax(f1))
    return m + 1, float(f1[m])


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())


def _accuracy(probs: np.ndarray | None, y: np.ndarray) -> float | None:
    return float((probs.argmax(axis=1) == y).mean()) if probs is not None and len(y) else None


@register
class LabelAuditor(Auditor):
    name = "label"
    details = {"suggested_label": pl.Utf8, "suggested_label_prob": pl.Float64}
    repair = RepairAction(
        RELABEL,
        planned=lambda p: p.relabel or p.drop_unconfident_label_issues,
        priority=60,
    )
    description = "rows whose given label is probably wrong (stacked model, kNN and text views)"
    requires = frozenset({Requires.LABELS, Requires.PRED_PROBS})
    Params = LabelParams

    def _views(self, ctx: AuditContext, lab: np.ndarray, y: np.ndarray) -> dict:
        """The out-of-sample views of the labelled rows, each [len(lab), k]."""
        p = self.params
        k = len(ctx.classes)
        views = {"model": np.asarray(ctx.pred_probs, dtype=np.float64)[lab]}
        use_knn = p.knn_weight is None or p.knn_weight > 0
        if use_knn and ctx.missing(frozenset({Requires.EMBEDDINGS})) is None:
            graph = ctx.knn(p.k)
            views["knn"] = knn_class_distribution(graph.indices, graph.distances, ctx.labels, k)[
                lab
            ]
        if p.text_view and p.knn_weight is None and ctx.texts is not None:
            for alpha, probs in text_views(
                ctx.texts, ctx.labels, k, folds=ctx.cv_folds, seed=ctx.seed
            ):
                views[f"text:{alpha}"] = probs[lab]
        return views

    def _stack(self, views: dict, y: np.ndarray, seed: int) -> tuple[list, np.ndarray]:
        """(names, weights) of the stack with the lowest log-loss on the given labels; among the
        text view's smoothings, one is kept."""
        base = [n for n in views if not n.startswith("text:")]
        texts = [n for n in views if n.startswith("text:")]
        best = None
        for extra in [[t] for t in texts] or [[]]:
            names = base + extra
            vs = [views[n] for n in names]
            w = fit_log_pool(vs, y, seed=seed)
            loss = _nll(log_pool(vs, w), y)
            if best is None or loss < best[0]:
                best = (loss, names, w)
        return best[1], best[2]

    def audit(self, ctx: AuditContext) -> AuditResult:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        p = self.params
        lab = np.flatnonzero(ctx.labelled)
        y = ctx.labels[lab]
        views = self._views(ctx, lab, y)
        model, vote = views["model"], views.get("knn")
        if p.knn_weight is not None:  # the fixed average (0: the model as given)
            names, weights = ["model"], None
            combined = model if vote is None else (1 - p.knn_weight) * model + p.knn_weight * vote
        elif len(views) == 1:
            names, weights, combined = ["model"], None, model  # the user's own, as given
        else:
            names, weights = self._stack(views, y, ctx.seed)
            combined = log_pool([views[n] for n in names], weights)
        combined = combined / combined.sum(axis=1, keepdims=True)
        rows = np.arange(len(y))
        score = np.clip(get_label_quality_scores(y, combined, method=p.score_method), 0.0, 1.0)

        try:
            noise, joint = noise_matrix(y, combined)
            noise_rate = float(1.0 - np.trace(joint))
        except (ValueError, IndexError):  # too few rows per class for the confident joint
            noise, noise_rate = None, None
        if noise is None:
            clean = combined
        else:  # the same views behind the noisy channel: the true class, not the given label
            vs = [views[n] for n in names]
            start = weights if weights is not None else np.ones(len(vs))
            clean = log_pool(vs, fit_log_pool(vs, y, noise=noise, start=start, seed=ctx.seed))
        if p.noise_model == "annotator" or noise is None:
            q = 1.0 - combined[rows, y]
            error_model = "annotator" if noise is not None else "annotator (no confident joint)"
        else:
            q = error_probability(y, clean, noise)
            error_model = "class_conditional"
        cut, expected_f1 = None, None
        if p.filter_by == "expected_f1":
            cut, expected_f1 = expected_f1_cut(score, q)
            is_issue = np.zeros(len(y), dtype=bool)
            is_issue[np.argsort(score, kind="stable")[:cut]] = True
        elif p.filter_by == "predicted_neq_given":
            # cleanlab's rule, computed directly: its implementation is this comparison
            is_issue = combined.argmax(axis=1) != y
        else:
            is_issue = np.asarray(
                find_label_issues(y, combined, filter_by=p.filter_by, n_jobs=1), dtype=bool
            )
        suggested = clean.argmax(axis=1)
        frame = pl.DataFrame(
            {
                "row_id": ctx.row_ids[lab],
                "is_issue": is_issue,
                "score": score,
                "given_label": _label_values(ctx.classes, y),
                "suggested_label": _label_values(ctx.classes, suggested),
                "suggested_label_prob": clean[rows, suggested],
                "error_prob": q,
                "pred_prob_given": model[rows, y],
                "knn_agreement": vote[rows, y] if vote is not None else np.full(len(y), np.nan),
            }
        )
        if vote is None:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("knn_agreement"))
        share = float(is_issue.mean()) if len(y) else 0.0
        per_class = {str(c): int(is_issue[y == i].sum()) for i, c in enumerate(ctx.classes)}
        text = next((n for n in names if n.startswith("text:")), None)
        return AuditResult(
            frame,
            score=1.0 - share,
            info={
                "filter_by": p.filter_by,
                "noise_model": p.noise_model,
                "error_prob_model": error_model,  # what q used (a fallback says so)
                # the fixed weight; None when the stack is fitted (view_weights); 0 without a vote
                "knn_weight": 0.0 if vote is None else p.knn_weight,
                "view_weights": None
                if weights is None
                else {n.split(":")[0]: float(w) for n, w in zip(names, weights)},
                "text_smoothing": float(text.split(":")[1]) if text else None,
                "k": ctx.knn(p.k).k if vote is not None else 0,
                "num_labelled": len(y),
                "flagged_by_given_label": per_class,
                "estimated_noise_rate": noise_rate,
                "expected_errors": float(q.sum()),
                "expected_f1": expected_f1,
                "model_accuracy": _accuracy(model, y),
                "knn_accuracy": _accuracy(vote, y),
                "text_accuracy": _accuracy(views[text], y) if text else None,
                "combined_accuracy": _accuracy(combined, y),
                "pred_probs": ctx.pred_probs_label,
            },
        )
