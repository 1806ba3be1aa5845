"""Out-of-sample predicted probabilities by K-fold cross-validation on embeddings."""

from __future__ import annotations

import numpy as np


def cross_val_pred_probs(
    x: np.ndarray, labels: np.ndarray, num_classes: int, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """P(class | x) for every row, each from a model that did not see that row's label.

    Rows with label -1 (unlabelled) get predictions from a model fit on all labelled rows."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.model_selection import StratifiedKFold  # noqa: PLC0415

    n = len(x)
    probs = np.full((n, num_classes), 1.0 / max(num_classes, 1))
    lab = np.flatnonzero(labels >= 0)
    y = labels[lab]
    counts = np.bincount(y, minlength=num_classes)
    folds = int(max(2, min(folds, counts[counts > 0].min() if (counts > 0).any() else 2)))

    def fit(idx):
        m = LogisticRegression(max_iter=500, C=1.0)
        m.fit(x[idx], labels[idx])
        return m

    def put(model, rows):
        p = model.predict_proba(x[rows])
        out = np.zeros((len(rows), num_classes))
        out[:, model.classes_] = p
        probs[rows] = out

    if len(np.unique(y)) >= 2 and len(lab) >= 2 * folds:
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for tr, te in skf.split(lab, y):
            put(fit(lab[tr]), lab[te])
        unl = np.flatnonzero(labels < 0)
        if len(unl):
            put(fit(lab), unl)
    return probs
