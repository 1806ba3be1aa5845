"""Out-of-sample predicted probabilities by K-fold cross-validation on embeddings.

The model is a linear softmax classifier, the same functional form as multinomial logistic
regression (P(c | x) = softmax(w_c . x + b_c)), but fitted in closed form as linear discriminant
analysis: class means and one pooled within-class covariance, shrunk towards a scaled identity
by the Oracle Approximating Shrinkage rule (Chen et al., 2010; no tuning), then calibrated by a
single temperature chosen to minimise the log-loss of the out-of-fold predictions against the
given labels. Fitting needs only sufficient statistics (per-fold scatter matrices and per-class
sums), gathered in one pass over the data, so K folds cost little more than one covariance
and there is no iterative solver to converge (bench/slice_scale.py times it against sklearn's
`LogisticRegression` on the same vectors; bench/RESULTS.md has the figures).

`knn_class_distribution` turns a kNN graph into a second out-of-sample predictor (the
similarity-weighted label vote of each row's neighbours); the `label` auditor averages the two.
"""

from __future__ import annotations

import numpy as np

PRED_MODEL = "lda-oas-temperature-cv-v1"  # names the model in `predictions` and the cache key
_CHUNK = 65_536  # rows per matrix product: bounds memory at 1M rows


def _fold_stats(x: np.ndarray, rows: np.ndarray, y: np.ndarray, k: int, mean: np.ndarray):
    """Sufficient statistics of `rows` in one pass: (scatter sum (x - mean)(x - mean)^T [d, d],
    per-class sums of x - mean [k, d], per-class counts [k]). Each chunk's products run in
    float32 BLAS and are accumulated in float64 (a chunk's rounding error is far below what
    the shrinkage changes)."""
    d = x.shape[1]
    scatter = np.zeros((d, d))
    sums = np.zeros((k, d))
    m32 = mean.astype(np.float32)
    for lo in range(0, len(rows), _CHUNK):
        r = rows[lo : lo + _CHUNK]
        xc = np.asarray(x[r], dtype=np.float32) - m32
        scatter += xc.T @ xc
        onehot = np.zeros((len(r), k), dtype=np.float32)
        onehot[np.arange(len(r)), y[r]] = 1.0
        sums += onehot.T @ xc
    return scatter, sums, np.bincount(y[rows], minlength=k).astype(np.float64)


def _logits(x: np.ndarray, rows: np.ndarray, mean: np.ndarray, w: np.ndarray, b: np.ndarray):
    out = np.empty((len(rows), len(b)))
    m32, w32 = mean.astype(np.float32), w.astype(np.float32)
    for lo in range(0, len(rows), _CHUNK):
        r = rows[lo : lo + _CHUNK]
        out[lo : lo + len(r)] = (np.asarray(x[r], dtype=np.float32) - m32) @ w32
    return out + b


def _oas_shrinkage(cov: np.ndarray, n: float) -> float:
    """Oracle Approximating Shrinkage intensity towards (tr(cov)/d) I."""
    d = cov.shape[0]
    tr = np.trace(cov)
    tr2 = float((cov * cov).sum())
    num = (1.0 - 2.0 / d) * tr2 + tr * tr
    den = (n + 1.0 - 2.0 / d) * (tr2 - tr * tr / d)
    return 1.0 if den <= 0 else float(min(1.0, num / den))


def _fit_linear(scatter: np.ndarray, sums: np.ndarray, counts: np.ndarray):
    """(W [d, k], b [k]) of the shrinkage-LDA softmax from training sufficient statistics."""
    d = sums.shape[1]
    n = counts.sum()
    present = counts > 0
    means = np.zeros_like(sums)
    means[present] = sums[present] / counts[present, None]
    within = scatter - (means * counts[:, None]).T @ means
    cov = within / max(n - present.sum(), 1.0)
    alpha = _oas_shrinkage(cov, n)
    mu = np.trace(cov) / d
    cov = (1.0 - alpha) * cov + alpha * mu * np.eye(d)
    cov += (1e-9 * mu + 1e-12) * np.eye(d)  # keeps the solve defined for degenerate inputs
    w = np.linalg.solve(cov, means.T)  # [d, k]
    prior = counts / n
    with np.errstate(divide="ignore"):
        b = -0.5 * np.einsum("dk,kd->k", w, means) + np.log(prior)
    w[:, ~present] = 0.0
    b[~present] = -np.inf  # a class absent from training gets probability 0
    return w, b


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the log-loss of softmax(logits / T) on labels y."""
    from scipy.optimize import minimize_scalar

    finite = np.where(np.isfinite(logits), logits, -1e30)
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        z = finite / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return float((lse - z[rows, y]).mean())

    res = minimize_scalar(nll, bounds=(np.log(0.02), np.log(50.0)), method="bounded")
    return float(np.exp(res.x))


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Positions of y split into `folds` parts with each class spread evenly (seeded shuffle)."""
    perm = np.random.default_rng(seed).permutation(len(y))
    order = perm[np.argsort(y[perm], kind="stable")]  # shuffled within each class
    ys = y[order]
    starts = np.searchsorted(ys, ys, side="left")  # first position of each row's class
    fold = (np.arange(len(y)) - starts) % folds
    return [np.sort(order[fold == f]) for f in range(folds)]


def cross_val_pred_probs(
    x: np.ndarray, labels: np.ndarray, num_classes: int, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """P(class | x) for every row, each from a model that did not see that row's label.

    Rows with label -1 (unlabelled) get predictions from a model fit on all labelled rows.
    Classes are columns 0..num_classes-1; a class absent from a fold's training rows gets
    probability 0 for that fold's rows."""
    n = len(x)
    k = num_classes
    probs = np.full((n, k), 1.0 / max(k, 1))
    lab = np.flatnonzero(labels >= 0)
    y = labels[lab]
    counts = np.bincount(y, minlength=k)
    if len(np.unique(y)) < 2:
        return probs
    folds = int(max(2, min(folds, counts[counts > 0].min())))
    if len(lab) < 2 * folds:
        return probs
    mean = sum(
        np.asarray(x[lab[lo : lo + _CHUNK]]).sum(axis=0, dtype=np.float64)
        for lo in range(0, len(lab), _CHUNK)
    ) / len(lab)
    parts = stratified_folds(y, folds, seed)
    parts = [lab[p] for p in parts]
    # sufficient statistics of each fold, gathered once
    stats = [_fold_stats(x, p, labels, k, mean) for p in parts]
    total_s = sum(s[0] for s in stats)
    total_sums = sum(s[1] for s in stats)
    total_counts = sum(s[2] for s in stats)
    logits = np.zeros((n, k))
    for p, (s_f, sums_f, counts_f) in zip(parts, stats):
        w, b = _fit_linear(total_s - s_f, total_sums - sums_f, total_counts - counts_f)
        logits[p] = _logits(x, p, mean, w, b)
    unl = np.flatnonzero(labels < 0)
    if len(unl):
        w, b = _fit_linear(total_s, total_sums, total_counts)
        logits[unl] = _logits(x, unl, mean, w, b)
    # one scalar: a seeded subsample of 200k rows pins it down as well as all of them
    fit_rows = np.arange(len(lab))
    if len(lab) > 200_000:
        fit_rows = np.random.default_rng(seed).choice(len(lab), 200_000, replace=False)
    t = _temperature(logits[lab[fit_rows]], y[fit_rows])
    with np.errstate(invalid="ignore"):
        probs = _softmax(np.where(np.isfinite(logits), logits / t, -np.inf))
    return np.nan_to_num(probs, nan=1.0 / k)


def knn_class_distribution(
    indices: np.ndarray,
    distances: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    alpha: float = 1.0,
) -> np.ndarray:
    """Each row's neighbours' label vote [n, num_classes], out of sample (a row is never its own
    neighbour): weights are cosine similarities (clipped at 0), unlabelled neighbours do not
    vote, and `alpha` pseudo-votes spread by the class prior keep rows with few or weak
    neighbours close to the prior instead of at 0 or 1."""
    n = indices.shape[0]
    safe = np.where(indices >= 0, indices, 0)
    nb_lab = np.where(indices >= 0, labels[safe], -1)
    w = np.clip(1.0 - distances.astype(np.float64), 0.0, None) * (nb_lab >= 0)
    flat = (np.arange(n)[:, None] * num_classes + np.maximum(nb_lab, 0)).ravel()
    votes = np.bincount(flat, weights=w.ravel(), minlength=n * num_classes)
    votes = votes.reshape(n, num_classes)
    lab = labels[labels >= 0]
    prior = np.bincount(lab, minlength=num_classes) / max(len(lab), 1)
    return (votes + alpha * prior) / (votes.sum(axis=1, keepdims=True) + alpha)
