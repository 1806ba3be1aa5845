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

   Flagging nothing wins when the probability that no label is wrong, `prod(1 - q)`, beats
   every cut.

Which error probability (`noise_model`). Step 2 models random flips: a wrong label is a
class-conditional accident, independent of how ambiguous the row is. Human annotation noise is
different: wrong labels sit on ambiguous rows, a model fitted on the given labels learns part
of them, and the confident joint, which counts only confident disagreements, sees a fraction
of them. `noise_model: annotator` models that: `q = 1 - C_g`, the given label read as one
annotator's draw from the class distribution, wrong as often as another draw would differ.
`auto` asks the data which kind it has. Random flips leave a floor: a row of an
easy class still carries another label with probability rho / (k - 1), so a model of the
given labels cannot be sure of anything; noise on ambiguous rows leaves none.
`uniform_flip_rate` fits rho, the rate of a uniform flip channel behind the stack, by profile
likelihood (under random flips it comes out near the flip rate). When rho is at least
`FLIP_CHANNEL_SHARE` of the confident joint's noise rate, the noise is read as random
(`class_conditional`); otherwise as annotator noise. But one labelling cannot tell the two
apart reliably: a clean set of ambiguous items has no floor either (there `auto` and `annotator`
flag every row an annotator could have labelled otherwise), and wrong labels that a human made
on confusable rows look to the confident joint like a little random noise (there
`class_conditional` stops far short of them). The two models are the ends of what the data
cannot decide between; `mixed` decides under that uncertainty: the cut maximises the
expected F1 averaged over both models, with probability `random_noise_prior` (0.6) that the
noise is random (Bayesian decision under model uncertainty). The cut then lands between the two
models' cuts, nearer the random one; a row's `error_prob` is the prior-weighted average of its
two probabilities. The default is `class_conditional`, the most conservative on careful labels:
`mixed` reaches more of the wrong labels that sit on confusable rows, but on a set it was not
chosen on (a clean tabular set) it flagged several times the rows Datalab does
(bench/label_quality.py and bench/false_alarms.py measure both). Choose `mixed`, `annotator` or
`auto` when human annotation noise is expected (crowd labels, weak labels).
`filter_by` also takes cleanlab's `find_label_issues` rules
(`predicted_neq_given`: the row's most likely class under `C` is not its label;
`prune_by_noise_rate`, Datalab's default; ...), applied to `C`.

Only labelled rows are audited. `details` holds `given_label`, `suggested_label` (the most likely
true class under `t`, original label values), `suggested_label_prob`, `error_prob` (`q`),
`pred_prob_given` (the model's probability of the given label) and `knn_agreement` (the
neighbours' vote for it). `info` has the view weights, each view's and `C`'s accuracy on the
given labels, the estimated noise rate and number of errors, the uniform flip channel's rate
and share (`auto`), the error-probability model used (and `random_noise_prior` for `mixed`),
and the cut's expected F1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl
from pydantic import Field

from ..store import schema as S
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
    noise_model: Literal["class_conditional", "mixed", "auto", "annotator"] = Field(
        "class_conditional",
        description="how a wrong label arises, for expected_f1: at random per class (confident "
        "joint), as an annotator's draw from the class distribution, mixed: the cut that "
        "maximises the expected F1 averaged over both (random_noise_prior on the first), or "
        "auto: class_conditional when a uniform flip channel explains a share of the estimated "
        "noise, else annotator",
    )
    random_noise_prior: float = Field(
        0.6,
        ge=0,
        le=1,
        description="noise_model mixed: the weight of class_conditional (random flips) against "
        "annotator noise in the expected F1 the cut maximises",
    )
    score_method: Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"] = (
        "self_confidence"
    )


# auto: random (class-conditional) noise when a uniform flip channel carries at least this share
# of the confident joint's noise rate. Measured shares are in bench/results/label_quality.json
# (cases[].info.uniform_flip_share): random flips and the semi-synthetic boundary flips of the
# text sets well above it, human noise (NoisyAG-News) near 0.
FLIP_CHANNEL_SHARE = 0.1


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


def error_probabilities(
    labels: np.ndarray,
    combined: np.ndarray,
    clean: np.ndarray,
    noise: np.ndarray | None,
    model: str,
    random_noise_prior: float = 0.6,
) -> tuple[np.ndarray, np.ndarray]:
    """(qs [n, models], prior): each row's probability that its label is wrong under the error
    model(s) `model` names, and the models' weights for the expected-F1 cut. `noise` None (no
    confident joint) leaves the annotator model only."""
    prior = error_model_prior(model, noise, random_noise_prior)
    annotator = 1.0 - combined[np.arange(len(labels)), labels]
    if noise is None or model == "annotator":
        return annotator[:, None], prior
    random_flips = error_probability(labels, clean, noise)
    if model == "mixed":
        return np.stack([random_flips, annotator], axis=1), prior
    return random_flips[:, None], prior


def error_model_prior(
    model: str, noise: np.ndarray | None, random_noise_prior: float
) -> np.ndarray:
    """The weights of the error models `error_probabilities` returns (its columns): mixed with a
    noisy channel: [random_noise_prior, 1 - random_noise_prior]; otherwise one model, [1]."""
    if model == "mixed" and noise is not None:
        return np.array([random_noise_prior, 1.0 - random_noise_prior], dtype=np.float64)
    return np.ones(1)


def uniform_flip_rate(probs: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """(rho, gain): the rate of a uniform flip channel (each label moved to any other class with
    probability rho / (k - 1), whatever the row) that best explains the given labels behind the
    stacked probabilities, by profile likelihood: for each rho the stack's temperature is refitted
    behind the channel T_rho (`fit_log_pool` with `noise`), and rho maximises the likelihood.
    `gain` is the log-likelihood gained over rho = 0 (summed over rows).

    Random flips leave a floor: a row of an easy class still carries another label with
    probability rho / (k - 1), so a model fitted on the given labels cannot be sure of anything
    and the channel lets it sharpen (rho comes out near the flip rate). Wrong labels that sit on
    ambiguous rows (human annotation noise) leave no floor: rho comes out near 0."""
    from scipy.optimize import minimize_scalar

    k = probs.shape[1]
    rows = np.arange(len(labels))
    logs = np.log(np.clip(probs, 1e-6, 1.0))

    def nll(rho: float) -> float:
        t = np.full((k, k), rho / (k - 1))
        np.fill_diagonal(t, 1.0 - rho)
        w = fit_log_pool([probs], labels, noise=t if rho > 0 else None, start=np.ones(1), seed=seed)
        z = w[0] * logs
        z -= z.max(axis=1, keepdims=True)
        clean = np.exp(z)
        clean /= clean.sum(axis=1, keepdims=True)
        given = (clean @ t.T)[rows, labels]
        return float(-np.log(np.maximum(given, 1e-300)).sum())

    top = 0.5 * (k - 1) / k  # half the way to labels that say nothing
    res = minimize_scalar(nll, bounds=(0.0, top), method="bounded", options={"xatol": 1e-4})
    rho, at_rho, at_zero = float(res.x), float(res.fun), nll(0.0)
    if at_zero <= at_rho:
        return 0.0, 0.0
    return rho, at_zero - at_rho


def expected_f1_cut(
    score: np.ndarray, q: np.ndarray, prior: np.ndarray | None = None
) -> tuple[int, float]:
    """(m, expected F1): flagging the m lowest-scored rows maximises the expected F1
    2 * sum(q of the flagged) / (m + sum(q)) when row i is wrong with probability q[i].
    Flagging nothing is right (F1 1) exactly when no label is wrong, which has probability
    prod(1 - q): when that beats every cut, m = 0 (a clean set whose rows each carry a sliver
    of doubt stays silent).

    `q` may hold one column per error model ([n, models]) with `prior` their weights: the cut
    then maximises the expected F1 averaged over the models (and flagging nothing is weighed by
    the averaged probability that no label is wrong)."""
    q = np.asarray(q, dtype=np.float64)
    if q.ndim == 1:
        q, prior = q[:, None], np.ones(1)
    w = np.asarray(prior, dtype=np.float64)
    w = w / w.sum()
    total = q.sum(axis=0)
    if len(q) == 0 or float(total @ w) <= 0.0:
        return 0, 0.0
    order = np.argsort(score, kind="stable")
    curves = 2.0 * np.cumsum(q[order], axis=0) / (np.arange(1, len(q) + 1)[:, None] + total)
    f1 = curves @ w
    m = int(np.argmax(f1))
    none = float(np.exp(np.log1p(-np.clip(q, 0.0, 1.0 - 1e-12)).sum(axis=0)) @ w)
    if none >= f1[m]:
        return 0, none
    return m + 1, float(f1[m])


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())


def _accuracy(probs: np.ndarray | None, y: np.ndarray) -> float | None:
    return float((probs.argmax(axis=1) == y).mean()) if probs is not None and len(y) else None


def label_rows(row_ids, classes, y, is_issue, score, q, clean, model, vote) -> pl.DataFrame:
    """The label auditor's rows: flag, score and details (the local and the Ray engine's)."""
    rows = np.arange(len(y))
    suggested = clean.argmax(axis=1)
    frame = pl.DataFrame(
        {
            S.ROW_ID: row_ids,
            "is_issue": is_issue,
            "score": score,
            "given_label": _label_values(classes, y),
            "suggested_label": _label_values(classes, suggested),
            "suggested_label_prob": clean[rows, suggested],
            "error_prob": q,
            "pred_prob_given": model[rows, y],
            "knn_agreement": vote[rows, y] if vote is not None else np.full(len(y), np.nan),
        }
    )
    if vote is None:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("knn_agreement"))
    return frame


def fit_stack(views: dict, y: np.ndarray, seed: int) -> tuple[list, np.ndarray]:
    """(names, weights) of the stack with the lowest log-loss on the given labels; of the text
    view's smoothings (views named `text:<alpha>`), one is kept."""
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


def pool_views(views: dict, names: list, weights, knn_weight: float | None) -> np.ndarray:
    """The views combined by a fit (both engines; rows sum to 1): the fixed average of the model
    and the vote when `knn_weight` is set, the model as given without weights, else the stack of
    the views `names` with `weights`."""
    model, vote = views["model"], views.get("knn")
    if knn_weight is not None:  # the fixed average (0: the model as given)
        combined = model if vote is None else (1 - knn_weight) * model + knn_weight * vote
    elif weights is None:
        combined = model  # the only view: the user's own pred_probs, as given
    else:
        combined = log_pool([views[n] for n in names], weights)
    return combined / combined.sum(axis=1, keepdims=True)


def combine_views(
    views: dict, y: np.ndarray, knn_weight: float | None, seed: int
) -> tuple[list, np.ndarray | None, np.ndarray]:
    """(names, weights, distribution) of the views combined (both engines): the fitted stack
    (`fit_stack`) unless `knn_weight` is set or the model is the only view (`pool_views`);
    weights are None unless fitted."""
    if knn_weight is not None or len(views) == 1:
        names, weights = ["model"], None
    else:
        names, weights = fit_stack(views, y, seed)
    return names, weights, pool_views(views, names, weights, knn_weight)


def clean_distribution(views: dict, names: list, clean_weights, noise, combined: np.ndarray):
    """t(x), each row's estimated distribution of the true class (both engines): the views
    `names` stacked with `fit_noise`'s weights behind the noisy channel `noise`, or `combined`
    when there is no channel."""
    return combined if noise is None else log_pool([views[n] for n in names], clean_weights)


def fit_noise(views: dict, names: list, weights, y: np.ndarray, combined: np.ndarray, seed: int):
    """(T, noise rate, clean weights) (both engines): the confident joint's noise matrix of the
    combined distribution, its noise rate, and the weights of the views `names` refitted behind
    that noisy channel, which model the true class rather than the given label; (None, None,
    None) when the confident joint cannot be estimated (too few rows per class)."""
    try:
        noise, joint = noise_matrix(y, combined)
    except (ValueError, IndexError):
        return None, None, None
    vs = [views[n] for n in names]
    start = weights if weights is not None else np.ones(len(vs))
    clean_weights = fit_log_pool(vs, y, noise=noise, start=start, seed=seed)
    return noise, float(1.0 - np.trace(joint)), clean_weights


@dataclass
class _Noise:
    """The noise estimate behind the flags: the confident joint's noise rate (None without one),
    the views' distribution of the true class, the error model used, each row's error
    probabilities under the model(s) and their prior, and `auto`'s uniform flip channel."""

    rate: float | None
    clean: np.ndarray
    error_model: str
    qs: np.ndarray
    prior: np.ndarray
    flip_rate: float | None = None
    flip_gain: float | None = None
    flip_share: float | None = None


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

    def _noise(self, views: dict, names: list, weights, y, combined, seed: int) -> _Noise:
        """The confident joint's noise estimate, the stack refitted behind it, the error model
        (`auto` chosen by the uniform flip channel) and each row's error probabilities."""
        p = self.params
        noise, noise_rate, clean_weights = fit_noise(views, names, weights, y, combined, seed)
        clean = clean_distribution(views, names, clean_weights, noise, combined)
        flip_rate, flip_gain, flip_share = None, None, None
        error_model = p.noise_model
        if p.noise_model == "auto" and noise is not None:
            if noise_rate > 0:
                flip_rate, flip_gain = uniform_flip_rate(combined, y, seed=seed)
                flip_share = flip_rate / noise_rate
            random_flips = noise_rate <= 0 or flip_share >= FLIP_CHANNEL_SHARE
            error_model = "class_conditional" if random_flips else "annotator"
        qs, prior = error_probabilities(
            y, combined, clean, noise, error_model, p.random_noise_prior
        )
        if noise is None:
            error_model = "annotator (no confident joint)"
        return _Noise(noise_rate, clean, error_model, qs, prior, flip_rate, flip_gain, flip_share)

    def _flags(self, y, combined, score, est: _Noise) -> tuple[np.ndarray, float | None]:
        """(is_issue, expected F1 of the cut or None) by `filter_by`."""
        p = self.params
        expected_f1 = None
        if p.filter_by == "expected_f1":
            cut, expected_f1 = expected_f1_cut(score, est.qs, est.prior)
            is_issue = np.zeros(len(y), dtype=bool)
            is_issue[np.argsort(score, kind="stable")[:cut]] = True
        elif p.filter_by == "predicted_neq_given":
            # cleanlab's rule, computed directly: its implementation is this comparison
            is_issue = combined.argmax(axis=1) != y
        else:
            from cleanlab.filter import find_label_issues

            is_issue = np.asarray(
                find_label_issues(y, combined, filter_by=p.filter_by, n_jobs=1), dtype=bool
            )
        return is_issue, expected_f1

    def audit(self, ctx: AuditContext) -> AuditResult:
        from cleanlab.rank import get_label_quality_scores

        p = self.params
        lab = np.flatnonzero(ctx.labelled)
        y = ctx.labels[lab]
        views = self._views(ctx, lab, y)
        model, vote = views["model"], views.get("knn")
        names, weights, combined = combine_views(views, y, p.knn_weight, ctx.seed)
        score = np.clip(get_label_quality_scores(y, combined, method=p.score_method), 0.0, 1.0)
        est = self._noise(views, names, weights, y, combined, ctx.seed)
        q = est.qs @ est.prior  # the row's error probability (mixed: averaged over the models)
        is_issue, expected_f1 = self._flags(y, combined, score, est)
        frame = label_rows(
            ctx.row_ids[lab], ctx.classes, y, is_issue, score, q, est.clean, model, vote
        )
        share = float(is_issue.mean()) if len(y) else 0.0
        per_class = {str(c): int(is_issue[y == i].sum()) for i, c in enumerate(ctx.classes)}
        text = next((n for n in names if n.startswith("text:")), None)
        return AuditResult(
            frame,
            score=1.0 - share,
            info={
                "filter_by": p.filter_by,
                "noise_model": p.noise_model,
                "random_noise_prior": p.random_noise_prior if p.noise_model == "mixed" else None,
                "error_prob_model": est.error_model,  # what q used (a fallback says so)
                # the fixed weight; None when the stack is fitted (view_weights); 0 without a vote
                "knn_weight": 0.0 if vote is None else p.knn_weight,
                "view_weights": None
                if weights is None
                else {n.split(":")[0]: float(w) for n, w in zip(names, weights)},
                "text_smoothing": float(text.split(":")[1]) if text else None,
                "k": ctx.knn(p.k).k if vote is not None else 0,
                "num_labelled": len(y),
                "flagged_by_given_label": per_class,
                "estimated_noise_rate": est.rate,
                # auto: the uniform flip channel's rate, its log-likelihood gain over none, and
                # its share of the estimated noise rate (>= FLIP_CHANNEL_SHARE: random flips)
                "uniform_flip_rate": est.flip_rate,
                "uniform_flip_gain": est.flip_gain,
                "uniform_flip_share": est.flip_share,
                "expected_errors": float(q.sum()),
                "expected_f1": expected_f1,
                "model_accuracy": _accuracy(model, y),
                "knn_accuracy": _accuracy(vote, y),
                "text_accuracy": _accuracy(views[text], y) if text else None,
                "combined_accuracy": _accuracy(combined, y),
                "pred_probs": ctx.pred_probs_label,
            },
        )
