"""spurious_token: tokens and bigrams that predict the label alone (text).

The "competency problems" test of Gardner et al. 2021 on every token and bigram; flags the rows
whose cue agrees with their label (the rows that teach the shortcut), unless the labels are
lexical or the cues cost the model nothing.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import Field

from ...store import schema as S
from ..base import FINDING, Auditor, AuditResult, Params, ReportSection, Requires, register
from .stats import accuracy_lift, error_excess, majority_baseline


class SpuriousTokenParams(Params):
    ngram_max: int = 2  # tokens and bigrams
    min_count: int = 10  # a cue must occur in at least this many labelled rows
    alpha: float = 0.01  # one-sided, Bonferroni-corrected over features x labels
    max_features: int | None = 200_000  # cap on the vocabulary (most frequent kept)
    lowercase: bool = True
    max_cues: int = 100  # cues listed in `info`
    # The labels are lexical (topic, sentiment: single words are the signal, not a shortcut)
    # and no row is flagged when a bag of words alone predicts the label out of sample with an
    # accuracy lift over the majority class, (acc - base) / (1 - base), above this share of the
    # model's own out-of-sample lift (of 1 without pred_probs; 1: never) ...
    lexical_lift: float = Field(0.5, gt=0.0, le=1.0)
    # ... or when more than this share of labelled rows carry a cue of their own label
    max_cue_coverage: float = Field(0.5, gt=0.0, le=1.0)
    lexical_rows: int = Field(20_000, ge=100)  # rows (seeded sample) the bag-of-words check uses
    # practical significance, needed to flag rows when out-of-sample pred_probs exist: the model
    # errs more on the counter-examples (rows carrying a cue of another label) than on the other
    # labelled rows (one-sided hypergeometric test at `harm_alpha`, by at least
    # `min_accuracy_gap`): the shortcut costs accuracy where it fails
    harm_alpha: float = Field(0.01, gt=0.0, lt=1.0)
    min_accuracy_gap: float = Field(0.05, ge=0.0, le=1.0)


def token_cues(
    texts,
    labels: np.ndarray,
    num_classes: int,
    ngram_max: int = 2,
    min_count: int = 10,
    alpha: float = 0.01,
    max_features: int | None = None,
    lowercase: bool = True,
):
    """The competency-problems test on every token and n-gram (Gardner et al. 2021).

    For feature x occurring in n_x rows, k_xy of them labelled y, and the label's share p_y:
    z = (k_xy / n_x - p_y) / sqrt(p_y (1 - p_y) / n_x). Gardner et al. take p_y = 1/|labels|;
    the class share is the same for balanced labels and the right null for unbalanced ones.
    A feature is a cue for y when z exceeds the one-sided critical value at alpha divided by the
    number of tests (features x labels). Returns (document-term matrix [n, V] binary CSR,
    vocabulary array, z [V, C], counts [V], counts per label [V, C], critical z)."""
    from scipy.stats import norm
    from sklearn.feature_extraction.text import CountVectorizer

    # No stop-word list: "not", "no", "never" are the classic cues.
    vec = CountVectorizer(
        ngram_range=(1, ngram_max),
        binary=True,
        lowercase=lowercase,
        token_pattern=r"(?u)\b\w+\b",
        min_df=max(1, min(min_count, len(texts))),
        max_features=max_features,
        dtype=np.float32,
    )
    X = vec.fit_transform(texts).tocsr()
    vocab = vec.get_feature_names_out()
    lab = labels >= 0
    Y = np.zeros((len(labels), num_classes), dtype=np.float32)
    Y[np.flatnonzero(lab), labels[lab]] = 1.0
    k_xy = np.asarray(X.T @ Y).astype(np.float64)  # [V, C]
    n_x = k_xy.sum(1)
    prior = Y.sum(0) / max(lab.sum(), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        phat = k_xy / n_x[:, None]
        se = np.sqrt(prior * (1 - prior) / n_x[:, None])
        z = np.where((n_x[:, None] > 0) & (se > 0), (phat - prior) / se, 0.0)
    m = max(z.size, 1)
    z_crit = float(norm.isf(alpha / m))
    return X, vocab, z, n_x, k_xy, prior, z_crit


def bag_of_words_lift(texts, labels: np.ndarray, num_classes: int, max_rows: int, seed: int = 0):
    """How far single words decide the label: 5-fold cross-validated accuracy of a multinomial
    naive Bayes on binary word counts (words in at least two rows) of the labelled rows (a
    seeded sample of at most `max_rows`), against the majority class. Returns accuracy,
    majority_baseline, accuracy_lift = (acc - base) / (1 - base), rows; None when it cannot run
    (fewer than 2 classes, a class in fewer than 2 rows, no word in two rows)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.naive_bayes import MultinomialNB

    lab = np.flatnonzero(labels >= 0)
    if len(lab) > max_rows:
        lab = np.sort(np.random.default_rng(seed).choice(lab, max_rows, replace=False))
    y = labels[lab]
    counts = np.bincount(y, minlength=num_classes)
    present = counts[counts > 0]
    if len(present) < 2 or present.min() < 2:
        return None
    vec = CountVectorizer(binary=True, token_pattern=r"(?u)\b\w+\b", min_df=2, dtype=np.float32)
    try:
        X = vec.fit_transform([texts[i] for i in lab])
    except ValueError:  # no word in two rows
        return None
    cv = StratifiedKFold(int(min(5, present.min())), shuffle=True, random_state=seed)
    pred = cross_val_predict(MultinomialNB(), X, y, cv=cv)
    acc = float((pred == y).mean())
    base = float(counts.max() / len(y))
    return {
        "accuracy": acc,
        "majority_baseline": base,
        "accuracy_lift": accuracy_lift(acc, base),
        "rows": len(y),
    }


def _cue_table(texts, labels: np.ndarray, C: int, p) -> tuple:
    """`token_cues` (empty when no token reaches min_count), with `is_cue` (z over the
    threshold, count at least min_count) and each cue's strength, (P(label | cue) - prior) /
    (1 - prior) clipped to [0, 1] (0 where not a cue)."""
    try:
        X, vocab, z, n_x, k_xy, prior, z_crit = token_cues(
            texts, labels, C, p.ngram_max, p.min_count, p.alpha, p.max_features, p.lowercase
        )
    except ValueError:  # empty vocabulary: no token reaches min_count
        X, vocab = None, np.array([], dtype=object)
        z = np.zeros((0, C))
        n_x, k_xy, prior, z_crit = np.zeros(0), np.zeros((0, C)), np.zeros(C), float("inf")
    is_cue = (z > z_crit) & (n_x[:, None] >= p.min_count)
    with np.errstate(invalid="ignore", divide="ignore"):
        strength = np.where(is_cue, (k_xy / np.maximum(n_x[:, None], 1) - prior) / (1 - prior), 0.0)
    strength = np.clip(np.nan_to_num(strength), 0.0, 1.0)
    return X, vocab, z, n_x, k_xy, prior, z_crit, is_cue, strength


def _row_cues(X, is_cue: np.ndarray, strength: np.ndarray, labels: np.ndarray, lab) -> tuple:
    """Per row: the strength and vocabulary index (-1 for none) of its strongest cue of its own
    label, and of its strongest cue of any other label."""
    n, C = len(labels), is_cue.shape[1]
    # Strongest cue of each row for each label, as sparse products (no loop over rows).
    best_s = np.zeros((n, C))
    best_j = np.full((n, C), -1, dtype=np.int64)
    if X is not None and is_cue.any():
        for c in range(C):  # one sparse pass per label
            cols = np.flatnonzero(is_cue[:, c])
            if not len(cols):
                continue
            strength_x = X[:, cols].multiply(strength[cols, c][None, :]).tocsr()
            best_s[:, c] = strength_x.max(axis=1).toarray().ravel()
            arg = np.asarray(strength_x.argmax(axis=1)).ravel()
            best_j[:, c] = np.where(best_s[:, c] > 0, cols[arg], -1)
    rows_idx = np.arange(n)
    own = np.where(lab, labels, 0)
    own_s = np.where(lab, best_s[rows_idx, own], 0.0)
    own_j = np.where(lab, best_j[rows_idx, own], -1)
    other = best_s.copy()
    other[rows_idx[lab], labels[lab]] = 0.0
    other_c = other.argmax(1)
    other_s = other[rows_idx, other_c]
    other_j = np.where(other_s > 0, best_j[rows_idx, other_c], -1)
    return own_s, own_j, other_s, other_j


def _row_cue_names(vocab, class_names, labels, carries, own_j, other_j) -> tuple:
    """Per row (None where none): its strongest cue of its own label, that label when the row
    `carries` it, and its strongest cue of another label."""
    n = len(labels)
    vocab_o = np.asarray(vocab, dtype=object)
    names = np.asarray(class_names, dtype=object)
    cue = np.full(n, None, dtype=object)
    cue[own_j >= 0] = vocab_o[own_j[own_j >= 0]]
    cue_label = np.full(n, None, dtype=object)
    cue_label[carries] = names[labels[carries]]
    counter = np.full(n, None, dtype=object)
    okc = other_j >= 0
    counter[okc] = vocab_o[other_j[okc]]
    return cue, cue_label, counter


def _cue_list(vocab, z, is_cue, n_x, k_xy, prior, strength, class_names, max_cues) -> tuple:
    """The cues strongest first (the first `max_cues`, with their figures) and the top ten
    per label."""
    fi, ci = np.nonzero(is_cue)
    order = np.argsort(-z[fi, ci], kind="stable")
    fi, ci = fi[order], ci[order]
    cues = [
        {
            "cue": str(vocab[f]),
            "label": class_names[c],
            "z": float(z[f, c]),
            "count": int(n_x[f]),
            "count_with_label": int(k_xy[f, c]),
            "p_label_given_cue": float(k_xy[f, c] / n_x[f]),
            "prior": float(prior[c]),
            "strength": float(strength[f, c]),
        }
        for f, c in zip(fi[:max_cues].tolist(), ci[:max_cues].tolist())
    ]
    by_label = {
        class_names[c]: [str(vocab[f]) for f in fi[ci == c][:10].tolist()]
        for c in range(len(class_names))
    }
    return cues, by_label


@register
class SpuriousToken(Auditor):
    """Tokens and bigrams whose rate under one label departs from the rest (text).

    `info.cues` lists each cue with its label, z, count and count under that label, P(label |
    cue) and the label's prior, strongest first; `info.cues_by_label` the top cues per label.
    Rows that carry a cue together with the label it predicts are flagged (they teach the
    shortcut); score = 1 - the cue's strength, (P(label | cue) - prior) / (1 - prior).

    The test is for tasks where single words should not decide the label (inference, reading
    comprehension). Where they do (a topic's own vocabulary, sentiment words), the words are the
    signal, not a shortcut: when a bag of words alone predicts the label out of sample with an
    accuracy lift over the majority class above `lexical_lift` (0.5) of what the model's
    out-of-sample pred_probs reach (of a perfect classifier's without them;
    `info.bag_of_words`: multinomial naive Bayes on word counts, 5-fold), or when most rows
    carry a cue of their own label (`max_cue_coverage`), the labels are lexical and no row is
    flagged; the cues are listed and the rows scored as before, and `info.lexical_labels` says
    so. MNLI, where "no", "never" and
    "not" predict contradiction, stays a shortcut task: its words alone predict nothing (the
    same premise comes with each label). Given out-of-sample pred_probs, rows are flagged only
    when the shortcut is practically significant: the model errs more on the counter-examples
    (rows carrying a cue of another label) than on the other rows, by `min_accuracy_gap` at
    `harm_alpha` (`info.harm`, `info.practically_significant`).
    `details`: `cue`, `cue_label`, and `counter_cue` (the strongest cue in the row that predicts
    another label: those rows are the counter-examples a shortcut gets wrong)."""

    name = "spurious_token"
    report = ReportSection(view="cue_table")
    kind = FINDING
    description = "tokens and bigrams that predict the label alone (competency-problems test)"
    requires = frozenset({Requires.TEXT, Requires.LABELS})
    Params = SpuriousTokenParams

    def audit(self, ctx) -> AuditResult:
        p = self.params
        labels = ctx.labels
        C = len(ctx.classes)
        class_names = [str(c) for c in ctx.classes]
        lab = labels >= 0
        X, vocab, z, n_x, k_xy, prior, z_crit, is_cue, strength = _cue_table(
            ctx.texts, labels, C, p
        )
        own_s, own_j, other_s, other_j = _row_cues(X, is_cue, strength, labels, lab)
        carries = lab & (own_s > 0)
        n_lab = int(lab.sum())
        coverage = float(carries.sum() / max(n_lab, 1))
        bow, model_lift, bar, words_decide = self._words_decide(ctx, labels, lab, C)
        lexical = coverage > p.max_cue_coverage or words_decide
        harm = self._harm(ctx, lab & (other_s > 0))
        significant = harm["harm_p_value"] is None or (
            harm["harm_p_value"] < p.harm_alpha and harm["accuracy_gap"] >= p.min_accuracy_gap
        )
        is_issue = carries if (not lexical and significant) else np.zeros_like(carries)
        cue, cue_label, counter = _row_cue_names(
            vocab, class_names, labels, carries, own_j, other_j
        )
        rows = pl.DataFrame(
            {
                S.ROW_ID: ctx.row_ids,
                "is_issue": is_issue,
                "score": np.clip(1.0 - own_s, 0.0, 1.0),
                "cue": pl.Series(cue.tolist(), dtype=pl.Utf8),
                "cue_label": pl.Series(cue_label.tolist(), dtype=pl.Utf8),
                "counter_cue": pl.Series(counter.tolist(), dtype=pl.Utf8),
            }
        )
        cues, by_label = _cue_list(
            vocab, z, is_cue, n_x, k_xy, prior, strength, class_names, p.max_cues
        )
        info = {
            "cues": cues,
            "cues_by_label": by_label,
            "num_cues": int(is_cue.sum()),
            "z_threshold": z_crit,
            "num_tests": int(z.size),
            "vocabulary_size": len(vocab),
            "min_count": p.min_count,
            "rows_with_own_cue": int(carries.sum()),
            "rows_with_counter_cue": int((lab & (other_j >= 0)).sum()),
            "cue_coverage": coverage,
            "bag_of_words": bow,
            "lexical_labels": bool(lexical),
            "harm": harm,
            "practically_significant": bool(significant),
        }
        if lexical:
            info["note"] = self._lexical_note(bow, bar, model_lift, words_decide, coverage)
        elif not significant:
            info["note"] = self._harmless_note(harm)
        return AuditResult(rows, score=1.0 - is_issue.sum() / max(n_lab, 1), info=info)

    def _words_decide(self, ctx, labels, lab, C: int) -> tuple:
        """(bag-of-words figures, the model's accuracy lift, the bar, whether the words alone
        decide the label): the bar is `lexical_lift` of the model's own out-of-sample lift
        (what the content predicts at all), so a small set of short texts is judged against
        what can be learnt from it; of a perfect classifier's without pred_probs."""
        p = self.params
        bow = bag_of_words_lift(ctx.texts, labels, C, p.lexical_rows, ctx.seed)
        model_lift = None
        if ctx.missing(frozenset({Requires.PRED_PROBS})) is None:
            pred = np.asarray(ctx.pred_probs)[lab].argmax(1)
            acc_m = float((pred == labels[lab]).mean())
            base_m = majority_baseline(labels[lab], C)
            model_lift = accuracy_lift(acc_m, base_m)
        bar = p.lexical_lift * (max(model_lift, 0.0) if model_lift is not None else 1.0)
        if bow is not None:
            bow["model_accuracy_lift"] = model_lift
            bow["bar"] = bar
        words_decide = bow is not None and bow["accuracy_lift"] > max(bar, 0.0)
        return bow, model_lift, bar, words_decide

    def _lexical_note(self, bow, bar, model_lift, words_decide: bool, coverage: float) -> str:
        """Why the labels are lexical, and that nothing is flagged for it."""
        p = self.params
        why = (
            f"a bag of words alone predicts the label out of sample with accuracy "
            f"{bow['accuracy']:.3f} against the majority class's "
            f"{bow['majority_baseline']:.3f} (lift {bow['accuracy_lift']:.2f}, over {bar:.2f}: "
            f"lexical_lift {p.lexical_lift:g} of "
            f"{'the model' if model_lift is not None else 'a perfect classifier'}'s)"
            if words_decide
            else f"{coverage:.0%} of labelled rows carry a cue of their own label (over "
            f"max_cue_coverage {p.max_cue_coverage:g})"
        )
        return (
            f"{why}: the labels are lexical (topic, sentiment), single words are the task's "
            "signal, not a shortcut; cues listed, rows scored, none flagged"
        )

    def _harmless_note(self, harm: dict) -> str:
        """Why nothing is flagged when the cues cost the model nothing."""
        p = self.params
        return (
            f"the model's out-of-sample accuracy on the counter-examples "
            f"({harm['counter_accuracy']:.3f}) is not below the other rows' "
            f"({harm['rest_accuracy']:.3f}) by {p.min_accuracy_gap:g} at p < "
            f"{p.harm_alpha:g} (p = {harm['harm_p_value']:.3g}): the cues cost nothing "
            "here; cues listed, rows scored, none flagged"
        )

    @staticmethod
    def _harm(ctx, counter: np.ndarray) -> dict:
        """Do the cues cost accuracy? Out-of-sample accuracy of the counter-examples (labelled
        rows that carry a cue of another label) against the other labelled rows, and the
        one-sided hypergeometric p-value of their errors (None without pred_probs, or when
        either side is empty)."""
        out = {"counter_rows": int(counter.sum()), "counter_accuracy": None}
        out |= {"rest_accuracy": None, "accuracy_gap": None, "harm_p_value": None}
        lab = ctx.labels >= 0
        rest = lab & ~counter
        if ctx.missing(frozenset({Requires.PRED_PROBS})) is not None:
            return out
        if not counter.any() or not rest.any():
            return out
        wrong = lab & (np.asarray(ctx.pred_probs).argmax(1) != ctx.labels)
        counter_acc, rest_acc, gap, p_value = error_excess(wrong, counter, lab)
        out.update(counter_accuracy=counter_acc, rest_accuracy=rest_acc, accuracy_gap=gap)
        out["harm_p_value"] = p_value
        return out
