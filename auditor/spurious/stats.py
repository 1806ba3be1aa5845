"""Statistics of one attribute against the label, shared by the spurious auditors.

Contingency tables, the majority-class baseline, the cross-validated accuracy of an
attribute-only classifier, (conditional) mutual information, Cramer's V and a chi-square test,
and how much of the content vectors the numeric columns explain.
"""

from __future__ import annotations

import numpy as np


def contingency(codes: np.ndarray, num_levels: int, labels: np.ndarray, num_classes: int):
    """Counts [num_levels, num_classes] of (attribute group, label)."""
    flat = np.bincount(codes * num_classes + labels, minlength=num_levels * num_classes)
    return flat.reshape(num_levels, num_classes)


def majority_baseline(labels: np.ndarray, num_classes: int) -> float:
    """Accuracy of always predicting the most frequent class: that class's count / N.

    (cleanlab's spurious-correlation check divides the majority class's *index* by N, which makes
    its baseline depend on how the classes happen to be numbered.)"""
    counts = np.bincount(labels, minlength=num_classes)
    return float(counts.max() / max(len(labels), 1))


def accuracy_lift(accuracy: float, baseline: float) -> float:
    """How far `accuracy` beats the majority-class `baseline`, as a share of the headroom:
    (acc - base) / (1 - base); 0 when the baseline is already perfect."""
    return (accuracy - baseline) / (1 - baseline) if baseline < 1 else 0.0


def error_excess(wrong: np.ndarray, group: np.ndarray, pool: np.ndarray) -> tuple:
    """Does a group of rows cost accuracy? (accuracy of the `group`, of the other rows of the
    `pool` it lies in, the gap rest - group, and the one-sided hypergeometric p-value of the
    group's share of the pool's errors); `wrong`: 1 where a model errs out of sample."""
    from scipy.stats import hypergeom

    n_pool, e_pool = int(pool.sum()), int(wrong[pool].sum())
    n_g, e_g = int(group.sum()), int(wrong[group].sum())
    rest = pool & ~group
    group_accuracy = 1.0 - e_g / n_g
    rest_accuracy = 1.0 - int(wrong[rest].sum()) / int(rest.sum())
    p_value = float(hypergeom.sf(e_g - 1, n_pool, e_pool, n_g))
    return group_accuracy, rest_accuracy, rest_accuracy - group_accuracy, p_value


def cv_attribute_accuracy(
    codes: np.ndarray,
    num_levels: int,
    labels: np.ndarray,
    num_classes: int,
    folds: int = 5,
    seed: int = 0,
) -> float:
    """Cross-validated accuracy of the best classifier that sees only the attribute: predict the
    most frequent label of the row's group in the training folds (the majority label of the
    training folds for a group they lack). Vectorised over folds and groups."""
    n = len(codes)
    folds = int(max(2, min(folds, n)))
    fold = np.random.default_rng(seed).permutation(n) % folds
    per_fold = np.bincount(
        (fold * num_levels + codes) * num_classes + labels,
        minlength=folds * num_levels * num_classes,
    ).reshape(folds, num_levels, num_classes)
    train = per_fold.sum(0, keepdims=True) - per_fold  # [F, A, C]: counts outside each fold
    pred = train.argmax(2)  # [F, A]
    fallback = train.sum(1).argmax(1)  # [F]: majority label of the training folds
    empty = train.sum(2) == 0
    pred = np.where(empty, fallback[:, None], pred)
    hits = np.take_along_axis(per_fold, pred[:, :, None], axis=2).sum()
    return float(hits / max(n, 1))


def conditional_mutual_information(
    a: np.ndarray, na: int, b: np.ndarray, nb: int, labels: np.ndarray, num_classes: int
) -> float:
    """I(label; A | B) in nats from group codes `a` and `b`: how much A says about the label
    once B is known (0 when B explains all of A's association)."""
    t = np.bincount((b * na + a) * num_classes + labels, minlength=nb * na * num_classes).reshape(
        nb, na, num_classes
    )
    p = t / max(t.sum(), 1)
    pb = p.sum((1, 2), keepdims=True)
    pba = p.sum(2, keepdims=True)
    pby = p.sum(1, keepdims=True)
    nz = p > 0
    num = (p * pb)[nz]
    den = np.broadcast_to(pba * pby, p.shape)[nz]
    return float(max((p[nz] * np.log(num / den)).sum(), 0.0))


def association_stats(table: np.ndarray) -> dict:
    """Mutual information (nats, and normalised by H(label)), chi-square p-value and Cramer's V
    (bias-corrected, Bergsma 2013) of a contingency table [groups, classes]."""
    from scipy.stats import chi2_contingency
    from sklearn.metrics import mutual_info_score

    t = table[table.sum(1) > 0][:, table.sum(0) > 0].astype(np.float64)
    n = t.sum()
    r, k = t.shape
    if n == 0 or r < 2 or k < 2:
        return {"mutual_information": 0.0, "normalized_mi": 0.0, "cramers_v": 0.0, "p_value": 1.0}
    mi = float(mutual_info_score(None, None, contingency=t))  # nats
    py = t.sum(0) / n
    h_y = float(-(py * np.log(py)).sum())  # columns with no rows were dropped above
    chi2, p_value, _, _ = chi2_contingency(t, correction=False)
    chi2, p_value = float(chi2), float(p_value)
    phi2 = max(0.0, chi2 / n - (k - 1) * (r - 1) / max(n - 1, 1))
    rc = r - (r - 1) ** 2 / max(n - 1, 1)
    kc = k - (k - 1) ** 2 / max(n - 1, 1)
    denom = min(kc - 1, rc - 1)
    v = float(np.sqrt(phi2 / denom)) if denom > 0 else 0.0
    return {
        "mutual_information": max(mi, 0.0),
        "normalized_mi": max(mi, 0.0) / h_y if h_y > 0 else 0.0,
        "cramers_v": min(v, 1.0),
        "p_value": p_value,
    }


def content_share_of_columns(
    x: np.ndarray, columns: list[np.ndarray], max_rows: int = 20000, seed: int = 0
) -> float | None:
    """How much of the content vectors `x` [n, d] the numeric columns explain linearly:
    adjusted R^2 of a least-squares fit of every vector dimension on the standardised columns
    (nulls at the column mean), over at most `max_rows` rows. None when there is no column or
    too few rows to fit them."""
    if not columns:
        return None
    n = len(x)
    take = np.arange(n)
    if n > max_rows:
        take = np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
    m = np.column_stack([np.asarray(c, dtype=np.float64)[take] for c in columns])
    m = np.where(np.isfinite(m), m, np.nanmean(np.where(np.isfinite(m), m, np.nan), axis=0))
    sd = m.std(0)
    m = (m[:, sd > 0] - m[:, sd > 0].mean(0)) / sd[sd > 0]
    k, rows = m.shape[1], len(take)
    if k == 0 or rows <= 2 * k + 2:
        return None
    xs = np.asarray(x, dtype=np.float64)[take]
    xs = xs - xs.mean(0)
    total = float((xs**2).sum())
    if total <= 0:
        return None
    a = np.column_stack([m, np.ones(rows)])
    coef, *_ = np.linalg.lstsq(a, xs, rcond=None)
    r2 = 1.0 - float(((xs - a @ coef) ** 2).sum()) / total
    return float(1.0 - (1.0 - r2) * (rows - 1) / (rows - k - 1))
