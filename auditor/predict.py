"""Out-of-sample predicted probabilities by K-fold cross-validation on embeddings.

The model is a linear softmax classifier, the same functional form as multinomial logistic
regression (P(c | x) = softmax(w_c . x + b_c)), but fitted in closed form as linear discriminant
analysis: class means and one pooled within-class covariance, shrunk towards a scaled identity,
then calibrated by a single temperature. The shrinkage intensity is chosen by the data: the
Oracle Approximating Shrinkage estimate (Chen et al., 2010) and a fixed grid (`SHRINKAGES`) are
all fitted, and the one whose out-of-fold predictions (each at its best temperature) have the
lowest log-loss against the given labels wins. OAS is optimal for estimating the covariance, not
for classifying with noisy labels, where stronger shrinkage often predicts better; the
out-of-fold log-loss measures exactly that. Fitting needs only sufficient statistics (per-fold
scatter matrices and per-class sums), gathered in one pass over the data, so K folds and the
whole grid cost little more than one covariance (one [d, d] eigendecomposition per fold serves
every intensity, one matrix product per fold scores them all), and there is no iterative solver
(bench/slice_scale.py times it against sklearn's `LogisticRegression` on the same vectors;
bench/RESULTS.md has the figures).

`knn_class_distribution` turns a kNN graph into a second out-of-sample predictor (the
similarity-weighted label vote of each row's neighbours) and `text_views` a third for text
stores (multinomial naive Bayes on sublinear TF-IDF of word unigrams and bigrams, hashed so that
shards of a corpus are featurised apart and agree, on the same folds; each fold's class-term
totals are the all-rows totals minus the fold's, so the Ray engine reduces them across workers).
`fit_log_pool` / `log_pool` stack out-of-sample predictors into one: `softmax(sum_v w_v log
p_v)`, the weights fitted by minimising the log-loss against the given labels (a multinomial
logistic regression on the views' log-probabilities, one coefficient per view, no intercept). A
view that adds nothing gets a weight near 0 and one that is anti-informative (a row's neighbours
tend to carry the other labels, as when each premise of an NLI set appears once with every
label) gets a negative weight. The stack's log-loss on the given labels is never worse than its
best view's (that view alone, at its best temperature, is one of the candidates), and it is
calibrated: the weights also set the temperature. Given a noise matrix, the same fit models the
true class behind a noisy channel instead (forward correction).
"""

from __future__ import annotations

import numpy as np

PRED_MODEL = "lda-shrinkage-cv-temperature-v2"  # names the model in `predictions`, the cache key
# shrinkage intensities tried beside the OAS estimate; the out-of-fold log-loss chooses
SHRINKAGES = (0.1, 0.2, 0.4, 0.6, 0.8)
_SELECT_ROWS = 20_000  # rows that judge the shrinkage (the log-loss differences are smooth)
_TEMPERATURE_ROWS = 200_000  # rows that fit the one temperature
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


def _fit_linear(scatter: np.ndarray, sums: np.ndarray, counts: np.ndarray, shrinkages=(None,)):
    """(W [d, k * len(shrinkages)], b [k * len(shrinkages)]) of the shrinkage-LDA softmax from
    training sufficient statistics, one [d, k] block per shrinkage intensity in `shrinkages`
    (None: the Oracle Approximating Shrinkage estimate)."""
    d = sums.shape[1]
    n = counts.sum()
    present = counts > 0
    means = np.zeros_like(sums)
    means[present] = sums[present] / counts[present, None]
    within = scatter - (means * counts[:, None]).T @ means
    cov = within / max(n - present.sum(), 1.0)
    mu = np.trace(cov) / d
    prior = counts / n
    # one eigendecomposition serves every intensity: (1 - a) cov + a mu I = V diag(...) V^T
    lam, vec = np.linalg.eigh(cov)
    lam = np.clip(lam, 0.0, None)
    proj = vec.T @ means.T  # [d, k]
    ws, bs = [], []
    for alpha in shrinkages:
        alpha = _oas_shrinkage(cov, n) if alpha is None else alpha
        # the small ridge keeps the inverse defined for degenerate inputs
        shrunk = (1.0 - alpha) * lam + alpha * mu + (1e-9 * mu + 1e-12)
        w = vec @ (proj / shrunk[:, None])  # [d, k] = shrunk covariance^-1 @ means^T
        with np.errstate(divide="ignore"):
            b = -0.5 * np.einsum("dk,kd->k", w, means) + np.log(prior)
        w[:, ~present] = 0.0
        b[~present] = -np.inf  # a class absent from training gets probability 0
        ws.append(w)
        bs.append(b)
    return np.concatenate(ws, axis=1), np.concatenate(bs)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _temperature(logits: np.ndarray, y: np.ndarray, xatol: float = 1e-5) -> tuple[float, float]:
    """(T, log-loss): the temperature minimising the mean log-loss of softmax(logits / T) on
    labels y, and that log-loss (`xatol`: tolerance on log T)."""
    from scipy.optimize import minimize_scalar

    finite = np.where(np.isfinite(logits), logits, -1e30)
    # the row maximum scales with 1/T, so it is subtracted once
    z0 = finite - finite.max(axis=1, keepdims=True)
    given = z0[np.arange(len(y)), y]

    def nll(log_t: float) -> float:
        inv_t = float(np.exp(-log_t))
        lse = np.log(np.exp(z0 * inv_t).sum(axis=1))
        return float(lse.mean() - inv_t * given.mean())

    res = minimize_scalar(
        nll, bounds=(np.log(0.02), np.log(50.0)), method="bounded", options={"xatol": xatol}
    )
    return float(np.exp(res.x)), float(res.fun)


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Positions of y split into `folds` parts with each class spread evenly (seeded shuffle)."""
    perm = np.random.default_rng(seed).permutation(len(y))
    order = perm[np.argsort(y[perm], kind="stable")]  # shuffled within each class
    ys = y[order]
    starts = np.searchsorted(ys, ys, side="left")  # first position of each row's class
    fold = (np.arange(len(y)) - starts) % folds
    return [np.sort(order[fold == f]) for f in range(folds)]


def calibration_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows that judge the shrinkage, rows that fit a temperature) among n labelled rows: a
    seeded sample of up to _SELECT_ROWS (sorted) and of up to _TEMPERATURE_ROWS (all n in order
    when there are no more). The Ray engine draws the same rows (engine/ray/graph.py)."""
    rng = np.random.default_rng(seed)
    sel = np.sort(rng.choice(n, min(n, _SELECT_ROWS), replace=False))
    fit_rows = np.arange(n)
    if n > _TEMPERATURE_ROWS:
        fit_rows = rng.choice(n, _TEMPERATURE_ROWS, replace=False)
    return sel, fit_rows


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
    grid = (None, *SHRINKAGES)
    logits = np.zeros((n, k * len(grid)))
    for p, (s_f, sums_f, counts_f) in zip(parts, stats):
        w, b = _fit_linear(total_s - s_f, total_sums - sums_f, total_counts - counts_f, grid)
        logits[p] = _logits(x, p, mean, w, b)
    # the shrinkage whose out-of-fold predictions, each at its best temperature, have the lowest
    # log-loss on the given labels (judged on a seeded sample of up to _SELECT_ROWS rows); then
    # the temperature of the winner on up to _TEMPERATURE_ROWS rows
    sel, fit_rows = calibration_rows(len(lab), seed)
    losses = [
        _temperature(logits[lab[sel], j * k : (j + 1) * k], y[sel], xatol=1e-3)[1]
        for j in range(len(grid))
    ]
    best = int(np.argmin(losses))
    logits = logits[:, best * k : (best + 1) * k]
    t = _temperature(logits[lab[fit_rows]], y[fit_rows])[0]
    unl = np.flatnonzero(labels < 0)
    if len(unl):
        w, b = _fit_linear(total_s, total_sums, total_counts, (grid[best],))
        logits[unl] = _logits(x, unl, mean, w, b)
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


_POOL_ROWS = 30_000  # rows that fit the stack weights (a seeded sample above this): a few scalars
_POOL_BOUND = 20.0  # |w_v| at most: keeps a degenerate view (all mass on one class) finite


def _log_views(views: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1.0)) for p in views])


def fit_log_pool(
    views: list[np.ndarray],
    labels: np.ndarray,
    noise: np.ndarray | None = None,
    start: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Weights w [len(views)] minimising the mean log-loss of the stack against `labels` (codes
    0..k-1, every row labelled). Each view is [n, k] out-of-sample probabilities; the weights may
    be negative (an anti-informative view) and are bounded by _POOL_BOUND.

    With `noise` (T[i, j] = P(given i | true j)) the stack models the true class and the given
    label goes through the noisy channel: P(given | x) = T @ log_pool(views, w) (forward loss
    correction, Patrini et al., 2017), so the stack need not blur itself to explain wrong labels."""
    from scipy.optimize import minimize

    n = len(labels)
    rows = np.arange(n)
    if n > _POOL_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(n, _POOL_ROWS, replace=False))
    logs = _log_views([np.asarray(p)[rows] for p in views])  # [v, m, k]
    y = labels[rows]
    at = np.arange(len(rows))
    channel = None if noise is None else np.asarray(noise, dtype=np.float64)[y]  # [m, k]

    def loss(w: np.ndarray):
        z = np.tensordot(w, logs, 1)
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        soft = np.exp(z - lse[:, None])
        if channel is None:
            soft[at, y] -= 1.0
            return float((lse - z[at, y]).mean()), np.einsum("vmk,mk->v", logs, soft) / len(y)
        # P(given) = sum_j T[given, j] t_j; d t_j / d w_v = t_j (L_vj - sum_i t_i L_vi)
        joint = channel * soft
        p_given = np.maximum(joint.sum(axis=1), 1e-300)
        mean_log = np.einsum("vmk,mk->vm", logs, soft)
        d = np.einsum("mk,vmk->vm", joint, logs) - p_given[None] * mean_log
        return float(-np.log(p_given).mean()), -(d / p_given[None]).mean(axis=1)

    if start is None:
        start = np.full(len(views), 1.0 / len(views))
    bounds = [(-_POOL_BOUND, _POOL_BOUND)] * len(views)
    res = minimize(
        loss, np.asarray(start, dtype=np.float64), jac=True, method="L-BFGS-B", bounds=bounds
    )
    return np.asarray(res.x, dtype=np.float64)


def log_pool(views: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """softmax(sum_v w_v log p_v) [n, k], computed in chunks of rows."""
    n = len(views[0])
    out = np.empty((n, np.asarray(views[0]).shape[1]))
    for lo in range(0, n, _CHUNK):
        z = np.tensordot(weights, _log_views([np.asarray(p)[lo : lo + _CHUNK] for p in views]), 1)
        out[lo : lo + _CHUNK] = _softmax(z)
    return out


NB_ALPHAS = (0.1, 0.3, 1.0, 3.0)  # naive Bayes smoothing tried; the stack's log-loss chooses

# The text view's features: word unigrams and bigrams hashed into TEXT_BUCKETS buckets (stateless,
# so shards of a corpus are featurised apart and agree: the Ray engine's tasks do exactly this),
# kept when at least two texts hold them, at most MAX_TERMS of them (the most frequent) and at
# most MAX_CELLS // classes, which bounds a naive Bayes model's class x term table (and what the
# Ray engine broadcasts) whatever the corpus and the number of classes.
TEXT_BUCKETS = 2**22
MAX_TERMS = 2**18
MAX_CELLS = 2**21


TOKEN = r"\b\w\w+\b"  # sklearn's default token pattern: words of two or more characters
HASH_SEED = 0  # polars' hash is stable across processes of one polars version, not across versions


HASH_CHUNK_BYTES = 2 * 2**20  # text hashed per polars call: bounds its working memory


def hashed_counts(texts):
    """Word 1-2 gram counts of `texts` in TEXT_BUCKETS hashed buckets (CSR float32 [n,
    TEXT_BUCKETS], one entry per text and bucket, indices sorted): lower-cased words of two or
    more characters (sklearn's tokenizer) and each pair of adjacent words, hashed by polars
    (bench/text_hashing.py times it against sklearn's HashingVectorizer), in chunks of about
    HASH_CHUNK_BYTES of text, so memory follows the chunk, not the corpus."""
    import polars as pl
    import scipy.sparse as sp

    s = pl.Series("text", list(texts) if not isinstance(texts, pl.Series) else texts, pl.Utf8)
    s = s.fill_null("")
    ends = np.cumsum(s.str.len_bytes().to_numpy().astype(np.int64))
    parts, lo = [], 0
    while lo < len(s) or not parts:
        done = int(ends[lo - 1]) if lo else 0
        hi = int(np.searchsorted(ends, done + HASH_CHUNK_BYTES, side="right"))
        hi = min(max(hi, lo + 1), len(s))
        parts.append(_hash_chunk(s.slice(lo, hi - lo)))
        lo = hi
    counts = sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
    counts.sort_indices()
    return counts


def _hash_chunk(s):
    import polars as pl
    import scipy.sparse as sp

    words = (
        pl.DataFrame({"w": s.str.to_lowercase().str.extract_all(TOKEN)})
        .with_row_index("row")
        .explode("w")
        .drop_nulls("w")
    )
    pairs = words.select(
        "row",
        w=pl.when(pl.col("row") == pl.col("row").shift(-1)).then(
            pl.col("w") + " " + pl.col("w").shift(-1)
        ),
    ).drop_nulls("w")
    grams = pl.concat([words, pairs]).select(
        "row", bucket=(pl.col("w").hash(seed=HASH_SEED) % TEXT_BUCKETS).cast(pl.Int64)
    )
    c = grams.group_by("row", "bucket").len()
    return sp.csr_matrix(
        (
            c["len"].to_numpy().astype(np.float32),
            (c["row"].to_numpy().astype(np.int64), c["bucket"].to_numpy()),
        ),
        shape=(len(s), TEXT_BUCKETS),
    )


def doc_freq(counts) -> np.ndarray:
    """Texts holding each bucket [TEXT_BUCKETS] (int64): additive over shards of the texts."""
    return np.bincount(counts.indices, minlength=TEXT_BUCKETS).astype(np.int64)


def select_terms(df: np.ndarray, docs: int, num_classes: int) -> dict | None:
    """The kept buckets (sorted) and their smoothed IDF ln((1 + docs) / (1 + df)) + 1 (sklearn's),
    from the document frequencies `df` of `docs` texts: buckets in at least two texts, the most
    frequent first (ties: the lower bucket) up to min(MAX_TERMS, MAX_CELLS // classes). None when
    no bucket is in two texts."""
    cand = np.flatnonzero(df >= 2)
    if not len(cand):
        return None
    cap = int(min(MAX_TERMS, max(1, MAX_CELLS // max(num_classes, 1))))
    if len(cand) > cap:
        cand = np.sort(cand[np.lexsort((cand, -df[cand]))[:cap]])
    idf = np.log((1.0 + docs) / (1.0 + df[cand])) + 1.0
    return {"kept": cand.astype(np.int64), "idf": idf}


def tfidf_rows(counts, terms: dict):
    """Sublinear TF-IDF of hashed counts on the kept buckets, each row L2-normalised (CSR
    float32 [rows, kept]; a text with no kept term is a zero row), as TfidfVectorizer's."""
    import scipy.sparse as sp

    kept = terms["kept"]
    n = counts.shape[0]
    idx = counts.indices
    pos = np.minimum(np.searchsorted(kept, idx), len(kept) - 1)
    hit = kept[pos] == idx
    row = np.repeat(np.arange(n), np.diff(counts.indptr))[hit]
    col = pos[hit]
    data = (1.0 + np.log(counts.data[hit].astype(np.float64))) * terms["idf"][col]
    norm = np.sqrt(np.bincount(row, weights=data * data, minlength=n))
    data = data / np.maximum(norm[row], 1e-300)
    return sp.csr_matrix(
        (data.astype(np.float32), (row, col)), shape=(n, len(kept)), dtype=np.float32
    )


def tfidf_matrix(texts, num_classes: int):
    """The text view's features of `texts` (tfidf_rows on select_terms of their own document
    frequencies), or None when no term occurs in two texts."""
    counts = hashed_counts(texts)
    terms = select_terms(doc_freq(counts), counts.shape[0], num_classes)
    return None if terms is None else tfidf_rows(counts, terms)


def class_sum_matrix(tf, labels: np.ndarray, rows: np.ndarray, num_classes: int):
    """Per-class sums of the TF-IDF rows `rows` (sparse [k, terms]): a naive Bayes model's
    statistics, additive over folds and shards."""
    import scipy.sparse as sp

    onehot = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (labels[rows], np.arange(len(rows)))),
        shape=(num_classes, len(rows)),
    )
    return onehot @ tf[rows]


def nb_class_sums(tf, labels: np.ndarray, rows: np.ndarray, num_classes: int) -> np.ndarray:
    """`class_sum_matrix` as a dense float64 [k, terms]."""
    return np.asarray(class_sum_matrix(tf, labels, rows, num_classes).todense(), np.float64)


def nb_model(sums: np.ndarray, counts: np.ndarray, alphas=NB_ALPHAS):
    """(log term probabilities [len(alphas), k, terms], log class prior [k]) of the multinomial
    naive Bayes model of class-term `sums` [k, terms] and class `counts` [k], one per smoothing."""
    with np.errstate(divide="ignore"):
        bias = np.log(counts / counts.sum())
    log_theta = np.empty((len(alphas), *sums.shape))
    for j, a in enumerate(alphas):
        term = sums + a
        log_theta[j] = np.log(term / term.sum(axis=1, keepdims=True))
    return log_theta, bias


def nb_apply(tf, log_theta: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Naive Bayes log-scores [rows, k * smoothings] of TF-IDF rows under `nb_model`'s output."""
    return np.concatenate([np.asarray(tf @ lt.T) + bias for lt in log_theta], axis=1)


def nb_scores(tf, sums: np.ndarray, counts: np.ndarray, alphas=NB_ALPHAS) -> np.ndarray:
    """Multinomial naive Bayes log-scores [rows, k * len(alphas)] of the TF-IDF rows `tf` under
    the model of class-term `sums` [k, terms] and class `counts` [k], one block per smoothing."""
    return nb_apply(tf, *nb_model(sums, counts, alphas))


def cross_val_nb_logits(
    tf, labels: np.ndarray, num_classes: int, parts: list[np.ndarray], alphas=NB_ALPHAS
) -> np.ndarray:
    """Out-of-fold multinomial naive Bayes log-scores [n, k * len(alphas)] on a TF-IDF matrix.

    Per fold the class-term totals are the all-rows totals minus the fold's (one sparse product
    per fold); `parts` are the labelled rows of each fold (positions into `labels`); unlabelled
    rows are scored by the model of all labelled rows."""
    n, k = tf.shape[0], num_classes
    fold_sums = [nb_class_sums(tf, labels, p, k) for p in parts]
    total = sum(fold_sums)
    counts = np.bincount(labels[labels >= 0], minlength=k).astype(np.float64)
    out = np.zeros((n, k * len(alphas)))
    for p, s in zip(parts, fold_sums):
        out[p] = nb_scores(tf[p], total - s, counts - np.bincount(labels[p], minlength=k), alphas)
    unl = np.flatnonzero(labels < 0)
    if len(unl):
        out[unl] = nb_scores(tf[unl], total, counts, alphas)
    return out


def nb_views(logits: np.ndarray, temperatures, num_classes: int) -> list[tuple[float, np.ndarray]]:
    """[(alpha, probs [n, k])]: each smoothing's block of naive Bayes log-scores at its
    temperature."""
    k = num_classes
    out = []
    for j, (alpha, t) in enumerate(zip(NB_ALPHAS, temperatures)):
        z = logits[:, j * k : (j + 1) * k]
        with np.errstate(invalid="ignore"):
            probs = _softmax(np.where(np.isfinite(z), z / t, -np.inf))
        out.append((alpha, np.nan_to_num(probs, nan=1.0 / k)))
    return out


def nb_temperatures(logits: np.ndarray, y: np.ndarray, num_classes: int) -> list[float]:
    """Each smoothing's temperature, fitted on the labelled rows' log-scores `logits` (labels
    `y`)."""
    k = num_classes
    return [_temperature(logits[:, j * k : (j + 1) * k], y)[0] for j in range(len(NB_ALPHAS))]


def text_views(
    texts, labels: np.ndarray, num_classes: int, folds: int = 5, seed: int = 0
) -> list[tuple[float, np.ndarray]]:
    """Out-of-fold TF-IDF naive Bayes views of the texts, one per smoothing in NB_ALPHAS, each
    calibrated by its own temperature (fitted on `calibration_rows`' temperature rows):
    [(alpha, probs [n, k])]. The folds are those of `cross_val_pred_probs` (same labels, folds
    and seed), so no row's view saw its label. Empty when there is no usable text view (no term
    occurs twice, too few labelled rows)."""
    lab = np.flatnonzero(labels >= 0)
    y = labels[lab]
    counts = np.bincount(y, minlength=num_classes)
    if len(np.unique(y)) < 2:
        return []
    folds = int(max(2, min(folds, counts[counts > 0].min())))
    if len(lab) < 2 * folds:
        return []
    tf = tfidf_matrix(texts, num_classes)
    if tf is None:
        return []
    k = num_classes
    parts = [lab[p] for p in stratified_folds(y, folds, seed)]
    logits = cross_val_nb_logits(tf, labels, k, parts)
    fit = lab[calibration_rows(len(lab), seed)[1]]
    return nb_views(logits, nb_temperatures(logits[fit], labels[fit], k), k)
