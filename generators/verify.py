"""Verification of generated samples: does each carry its target label (and group)? Is it new?

Automated edits often fail to do what they were asked (a counterfactual that does not flip the
label, an image of the wrong class), so nothing generated is kept unverified. The verifier is a
logistic regression on the store's embeddings of the real rows. It is fitted with weights that
balance every label x group cell, so it leans on the label's own evidence rather than on the
spurious attribute the rebalancing is meant to break (a verifier that had learnt "green means 1"
would reject every good green 0). A sample is kept when the predicted label is the target and its
probability beats the runner-up by `margin`. When the groups are given and predictable from the
embedding (held-out accuracy >= `group_min_accuracy`), the predicted group must match too.
Then near-duplicates (cosine similarity >= `dedupe_threshold` to a real row or to a sample kept
before) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..store.knn import normalize

MAX_FIT_ROWS = 20_000


def _balanced_weights(*keys: np.ndarray) -> np.ndarray:
    """Weights that give every combination of `keys` the same total weight."""
    combo = np.unique(
        np.stack([np.asarray(k).astype(str) for k in keys], 1), axis=0, return_inverse=True
    )[1].ravel()
    counts = np.bincount(combo)
    w = 1.0 / counts[combo]
    return w * (len(w) / w.sum())


def _fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, seed: int):
    from sklearn.linear_model import LogisticRegression

    # C=10: normalised embeddings give small logits; a verifier needs usable margins
    m = LogisticRegression(max_iter=2000, C=10.0, random_state=seed)
    m.fit(x, y, sample_weight=w)
    return m


@dataclass
class Verdict:
    """Per candidate: kept, why not, the target's probability and its margin."""

    keep: np.ndarray
    reason: np.ndarray  # "" when kept, else "label", "margin", "group" or "duplicate"
    prob: np.ndarray
    margin: np.ndarray
    predicted: np.ndarray
    group_checked: bool = False
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        u, c = np.unique(self.reason, return_counts=True)
        return {("kept" if k == "" else str(k)): int(v) for k, v in zip(u, c)}


class Verifier:
    """Classifier of label (and group) fitted on the embeddings of real rows."""

    def __init__(
        self,
        vectors: np.ndarray,
        labels,
        groups=None,
        margin: float = 0.1,
        group_min_accuracy: float = 0.8,
        seed: int = 0,
    ):
        x = normalize(np.asarray(vectors, dtype=np.float32))
        labels = np.asarray(labels).astype(str)
        self.margin = float(margin)
        self.seed = seed
        self.notes: list[str] = []
        rng = np.random.default_rng(seed)
        idx = np.arange(len(x))
        if len(idx) > MAX_FIT_ROWS:
            idx = np.sort(rng.choice(idx, MAX_FIT_ROWS, replace=False))
        x, labels = x[idx], labels[idx]
        g = None if groups is None else np.asarray(groups).astype(str)[idx]
        if len(np.unique(labels)) < 2:
            raise ValueError("the verifier needs at least two labels among the real rows")
        w = _balanced_weights(labels, g) if g is not None else _balanced_weights(labels)
        self.label_model = _fit(x, labels, w, seed)
        self.group_model = None
        self.group_accuracy = None
        if g is not None and len(np.unique(g)) >= 2:
            acc = self._holdout_accuracy(x, g, labels, rng)
            if acc >= group_min_accuracy:
                self.group_model = _fit(x, g, _balanced_weights(labels, g), seed)
            else:
                self.notes.append(
                    f"group not checked: the embedding predicts it with held-out accuracy "
                    f"{acc:.2f} < {group_min_accuracy}"
                )

    def _holdout_accuracy(self, x, g, labels, rng) -> float:
        perm = rng.permutation(len(x))
        cut = len(x) // 2
        tr, te = perm[:cut], perm[cut:]
        if len(np.unique(g[tr])) < 2 or len(te) == 0:
            return 0.0
        m = _fit(x[tr], g[tr], _balanced_weights(labels[tr], g[tr]), self.seed)
        pred = m.predict(x[te])
        # balanced accuracy: the minority groups are the ones that matter here
        accs = [np.mean(pred[g[te] == v] == v) for v in np.unique(g[te])]
        self.group_accuracy = float(np.mean(accs))
        return self.group_accuracy

    def check(self, vectors: np.ndarray, target_labels, target_groups=None) -> Verdict:
        """Label (and group) check of candidates; duplicates are handled by `dedupe`."""
        x = normalize(np.asarray(vectors, dtype=np.float32))
        t = np.asarray(target_labels).astype(str)
        n = len(x)
        if n == 0:
            e = np.zeros(0)
            return Verdict(e.astype(bool), e.astype(str), e, e, e.astype(str))
        p = self.label_model.predict_proba(x)
        classes = self.label_model.classes_.astype(str)
        col = {c: i for i, c in enumerate(classes)}
        ti = np.array([col.get(v, -1) for v in t])
        known = ti >= 0
        pt = np.where(known, p[np.arange(n), np.maximum(ti, 0)], 0.0)
        other = p.copy()
        other[np.arange(n)[known], ti[known]] = -1.0
        margin = pt - other.max(1)
        pred = classes[p.argmax(1)]
        reason = np.full(n, "", dtype=object)
        reason[(pred != t) | ~known] = "label"
        reason[(reason == "") & (margin < self.margin)] = "margin"
        checked = False
        if self.group_model is not None and target_groups is not None:
            checked = True
            gp = self.group_model.predict(x).astype(str)
            reason[(reason == "") & (gp != np.asarray(target_groups).astype(str))] = "group"
        return Verdict(
            reason == "", reason.astype(str), pt, margin, pred, checked, list(self.notes)
        )


def dedupe(
    candidates: np.ndarray,
    reference: np.ndarray | None = None,
    threshold: float = 0.995,
    mask: np.ndarray | None = None,
    chunk: int = 4096,
) -> np.ndarray:
    """Keep-mask over candidates: False for a candidate whose cosine similarity to a reference
    row, or to an earlier candidate still kept, is >= threshold. `mask` limits the candidates
    considered (others stay False)."""
    c = normalize(np.asarray(candidates, dtype=np.float32))
    keep = np.ones(len(c), bool) if mask is None else np.asarray(mask, bool).copy()
    if len(c) == 0:
        return keep
    if reference is not None and len(reference):
        r = normalize(np.asarray(reference, dtype=np.float32))
        best = np.full(len(c), -np.inf, dtype=np.float32)
        step = max(1, min(chunk, (1 << 23) // len(c)))  # <= ~32 MB of similarities at once
        for s in range(0, len(r), step):  # bounded memory against a large split
            best = np.maximum(best, (c @ r[s : s + step].T).max(1))
        keep &= best < threshold
    return keep & _first_of_near_copies(c, keep, threshold)


def _first_of_near_copies(c: np.ndarray, keep: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy in candidate order: a candidate stays unless an earlier one that stays is within
    `threshold`. Pairs come from blocks of the similarity matrix (bounded memory, never n x n);
    only candidates with an earlier near copy (few) are settled one by one."""
    idx = np.flatnonzero(keep)
    out = keep.copy()
    if len(idx) < 2:
        return out
    sub = c[idx]
    block = max(1, (1 << 23) // len(idx))  # ~32 MB of float32 similarities per block
    later, earlier = [], []
    for s in range(0, len(idx), block):
        sims = sub[s : s + block] @ sub.T
        r, col = np.nonzero(sims >= threshold)
        del sims  # one block alive at a time
        r = r + s
        before = col < r
        later.append(r[before])
        earlier.append(col[before])
    later_i, earlier_i = np.concatenate(later), np.concatenate(earlier)
    if len(later_i) == 0:
        return out
    order = np.argsort(later_i, kind="stable")
    later_i, earlier_i = later_i[order], earlier_i[order]
    stays = np.ones(len(idx), bool)
    starts = np.flatnonzero(np.r_[True, later_i[1:] != later_i[:-1]])
    ends = np.r_[starts[1:], len(later_i)]
    for a, b in zip(starts, ends):  # candidates that have an earlier near copy, in order
        stays[later_i[a]] = not stays[earlier_i[a:b]].any()
    out[idx[~stays]] = False
    return out


def verify_candidates(
    verifier: Verifier,
    vectors: np.ndarray,
    target_labels,
    target_groups=None,
    reference: np.ndarray | None = None,
    dedupe_threshold: float = 0.995,
) -> Verdict:
    """Label/group check, then dedupe among the survivors (reason `duplicate`)."""
    v = verifier.check(vectors, target_labels, target_groups)
    keep = dedupe(vectors, reference, dedupe_threshold, mask=v.keep)
    dup = v.keep & ~keep
    v.reason = v.reason.astype(object)
    v.reason[dup] = "duplicate"
    v.reason = v.reason.astype(str)
    v.keep = keep
    return v
