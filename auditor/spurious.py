"""Spurious correlations: attributes and text cues that predict the label on their own.

`spurious_attribute` tests every metadata column and derived property (auditor/properties.py)
against the label; `spurious_token` tests every token and bigram of the text (the "competency
problems" test of Gardner et al. 2021). Both flag the rows a model that learnt the shortcut would
treat differently: the under-represented groups of an attribute (the rows a shortcut fails on),
and the rows whose cue agrees with their label (the rows that teach the shortcut).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import Field

from ..store import schema as S
from .base import FINDING, Auditor, AuditResult, Params, ReportSection, Requires, register
from .properties import Groups, context_properties, discretize


# --- statistics of one attribute against the label --------------------------------------------
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


# --- spurious_attribute -------------------------------------------------------------------------
class SpuriousAttributeParams(Params):
    bins: int = 5  # quantile bins for numeric attributes
    max_levels: int = 20  # categories kept per attribute (the rest pooled as "(other)")
    folds: int = 5  # cross-validation folds of the attribute-only classifier
    alpha: float = 0.01  # chi-square significance, Bonferroni-corrected over attributes
    min_cramers_v: float = 0.1  # association strength to report an attribute
    strong_cramers_v: float = 0.3  # association strength to flag its minority groups
    underrep_ratio: float = 0.5  # a cell is under-represented below this observed/expected
    min_expected: float = 5.0  # ... and only if independence would give it this many rows
    redundancy: float = 0.2  # I(label; A | stronger B) / I(label; A) below this: A is redundant
    # practical significance, needed to flag rows: the attribute alone predicts the label better
    # than the majority class by at least this share of the headroom, (acc - base) / (1 - base)
    min_accuracy_lift: float = Field(0.1, ge=0.0, le=1.0)
    # ... and, when out-of-sample pred_probs exist, the model errs more on the under-represented
    # cells than on the rest of their labels (one-sided hypergeometric test at `harm_alpha`, by
    # at least `min_accuracy_gap`): the shortcut costs accuracy where it fails
    harm_alpha: float = Field(0.01, gt=0.0, lt=1.0)
    min_accuracy_gap: float = Field(0.05, ge=0.0, le=1.0)
    # the metadata columns are the content itself (a table ingested with `--vector` of its own
    # measurements): the numeric columns explain at least this share of the vectors' variance
    # (adjusted R^2); a column is then one of the task's features, not a shortcut, and flags
    # nothing (the label can be learnt from nothing else)
    content_r2: float = Field(0.9, gt=0.0, le=1.0)
    properties: bool = True  # also test derived properties (text length, image colour, ...)
    exclude: list[str] = Field(default_factory=list)  # metadata columns not to test
    workers: int = 8  # threads reading images for their properties
    max_table_rows: int = 200  # group-table rows kept per attribute in `info`


@register
class SpuriousAttribute(Auditor):
    """Attributes (metadata columns, derived properties) that predict the label on their own.

    Per attribute: cross-validated accuracy of predicting the label from the attribute alone
    against the majority-class frequency, mutual information, Cramer's V and a chi-square test.
    `info.groups` holds, for each associated attribute, the label x value table with count,
    share, share within the label, observed/expected ratio and out-of-sample accuracy (argmax of
    the context's pred_probs, when it has them), and the worst-group accuracy. An associated
    attribute is a finding; rows are flagged only where the finding is practically significant
    and the row is one a shortcut fails on: the rows in the under-represented cells
    (observed/expected below `underrep_ratio`) of a strongly associated attribute that the model
    misclassifies out of sample (every such row without pred_probs), unless a
    stronger attribute already explains its association with the label (conditional mutual
    information; `redundant_with` names it), and only when the attribute alone beats the
    majority baseline by `min_accuracy_lift` of the headroom (an attribute with no lift never
    flags) and, given out-of-sample pred_probs, the model errs more on those cells than on the
    rest of their labels (`under_accuracy`, `rest_accuracy`, `harm_p_value`): a property that
    merely follows the content (the ink of a handwritten 8) costs the model nothing there.
    A shortcut is a column the label could be learnt without; when the numeric metadata columns
    are the content itself (they explain at least `content_r2` of the embedding's variance,
    adjusted R^2: a table ingested with `--vector` of its own measurements), every metadata
    column is one of the task's features, reported with `is_content` and never flagging
    (`info.content_explained_by_columns`, `info.columns_are_content`).
    `info.flagging` lists the attributes that flag, `info.not_practically_significant` the
    strong ones that do not; `details`: `attribute`, `value`, `group_share` (the cell's share of
    its label's rows). Score: the cell's observed/expected ratio, capped at 1."""

    name = "spurious_attribute"
    report = ReportSection(view="group_heatmap", own_section=("spurious", "Spurious attributes"))
    kind = FINDING
    description = "attributes that predict the label alone; flags the minority groups"
    requires = frozenset({Requires.LABELS})
    Params = SpuriousAttributeParams

    def skip_reason(self, ctx) -> str | None:
        if not ctx.metadata_columns and not (
            self.params.properties and (ctx.texts is not None or ctx.image_paths is not None)
        ):
            return "no attributes to test: no metadata columns, text or images"
        return None

    def _attributes(self, ctx) -> tuple[list[tuple[str, str, pl.Series, bool | None]], list]:
        """(name, source, values, numeric) of each attribute to test: the metadata columns the
        data definition does not call identifier or text, then the text/image properties."""
        out, skipped = [], []
        for col in ctx.metadata_columns:
            if col in self.params.exclude:
                continue
            kind = ctx.column_type(col)
            if kind in ("identifier", "text"):
                skipped.append({"attribute": col, "reason": f"type {kind} in the data definition"})
                continue
            out.append((col, "metadata", ctx.frame[col], kind == "numeric"))
        if self.params.properties:
            props = context_properties(ctx, workers=self.params.workers)
            taken = {name for name, *_ in out}
            for col in props.columns:
                name = col if col not in taken else f"property:{col}"
                out.append((name, "property", props[col], None))
        return out, skipped

    def audit(self, ctx) -> AuditResult:
        p = self.params
        labels_all = ctx.labels
        lab = labels_all >= 0
        y = labels_all[lab]
        C = len(ctx.classes)
        n = int(lab.sum())
        class_names = [str(c) for c in ctx.classes]
        baseline = majority_baseline(y, C)
        correct = None
        if ctx.missing(frozenset({Requires.PRED_PROBS})) is None:
            correct = (np.asarray(ctx.pred_probs)[lab].argmax(1) == y).astype(np.float64)

        attrs, skipped = self._attributes(ctx)
        content_r2 = None
        if ctx.missing(frozenset({Requires.EMBEDDINGS})) is None:
            numeric = [  # the columns the data definition calls numeric
                s.to_numpy() for _, source, s, num in attrs if source == "metadata" and num
            ]
            content_r2 = content_share_of_columns(ctx.embeddings, numeric, seed=ctx.seed)
        columns_are_content = content_r2 is not None and content_r2 >= p.content_r2
        tested = self._test_attributes(attrs, lab, y, C, baseline, skipped, ctx.seed)
        self._mark_redundant(tested, n, y, C)
        ratio_rows, flag_rows, which, groups_info = self._shortcut_cells(
            tested, n, y, correct, class_names, columns_are_content
        )
        score, is_issue, attribute, value, share = _row_cells(
            tested, which, ratio_rows, flag_rows, lab, y, C
        )

        associated = [st for _, _, st, _ in tested if st["associated"]]
        info = {
            "majority_baseline": baseline,
            "num_rows": n,
            "num_attributes_tested": len(tested),
            **_association_lists(associated),
            "content_explained_by_columns": content_r2,
            "columns_are_content": columns_are_content,
            "attributes": [st for _, _, st, _ in tested][:100],
            "groups": groups_info,
            "skipped_attributes": skipped,
            "accuracy_source": "pred_probs" if correct is not None else None,
        }
        rows = pl.DataFrame(
            {
                S.ROW_ID: ctx.row_ids,
                "is_issue": is_issue,
                "score": np.clip(score, 0.0, 1.0),
                "attribute": pl.Series(attribute.tolist(), dtype=pl.Utf8),
                "value": pl.Series(value.tolist(), dtype=pl.Utf8),
                "group_share": pl.Series(share).fill_nan(None),
            }
        )
        top_v = max((st["cramers_v"] for st in associated), default=0.0)
        return AuditResult(rows, score=1.0 - top_v, info=info)

    def _test_attributes(self, attrs, lab, y, C: int, baseline: float, skipped: list, seed):
        """(groups, source, stats, label table) of each attribute with two groups or more,
        strongest association (Cramer's V) first; `associated` and `strong` after a Bonferroni
        adjustment over the attributes tested. Those with fewer groups go to `skipped`."""
        p = self.params
        tested: list[tuple[Groups, str, dict, np.ndarray]] = []
        for name, source, series, numeric in attrs:
            g = discretize(
                series.filter(pl.Series(lab)), p.bins, p.max_levels, name=name, numeric=numeric
            )
            if g is None:
                skipped.append({"attribute": name, "reason": "fewer than two groups"})
                continue
            table = contingency(g.codes, g.num_levels, y, C)
            stats = association_stats(table)
            acc = cv_attribute_accuracy(g.codes, g.num_levels, y, C, p.folds, seed)
            stats = {
                "attribute": name,
                "source": source,
                "kind": g.kind,
                "num_groups": g.num_levels,
                "cv_accuracy": acc,
                "majority_baseline": baseline,
                "accuracy_lift": (acc - baseline) / (1 - baseline) if baseline < 1 else 0.0,
                **stats,
            }
            tested.append((g, source, stats, table))
        m = max(len(tested), 1)
        for _, _, st, _ in tested:
            st["p_adjusted"] = min(1.0, st["p_value"] * m)
            st["associated"] = bool(
                st["p_adjusted"] < p.alpha and st["cramers_v"] >= p.min_cramers_v
            )
            st["strong"] = bool(st["associated"] and st["cramers_v"] >= p.strong_cramers_v)
        tested.sort(key=lambda t: -t[2]["cramers_v"])
        return tested

    def _mark_redundant(self, tested: list, n: int, y, C: int) -> None:
        """Set `redundant_with` (and `conditional_mi`) on each associated attribute.

        An associated attribute whose link to the label a stronger one already explains
        (I(label; A | B) below `redundancy` x I(label; A)) is reported but flags nothing:
        the red channel of an image says nothing the `color` column has not said.
        Conditioning is on the attributes kept so far jointly, so two colour channels together
        explain a third, and brightness."""
        kept: list[str] = []
        joint = np.zeros(n, dtype=np.int64)
        n_joint = 1
        # The user's own columns come first: a property they explain adds nothing nameable.
        for g, _, st, _ in sorted(tested, key=lambda t: t[1] != "metadata"):
            if not st["associated"]:
                continue
            st["redundant_with"] = None
            if kept:
                cmi = conditional_mutual_information(g.codes, g.num_levels, joint, n_joint, y, C)
                st["conditional_mi"] = cmi
                if cmi < self.params.redundancy * st["mutual_information"]:
                    st["redundant_with"] = " + ".join(kept)
                    continue
            kept.append(g.name)
            _, joint = np.unique(joint * g.num_levels + g.codes, return_inverse=True)
            n_joint = int(joint.max()) + 1

    def _shortcut_cells(self, tested, n: int, y, correct, class_names, columns_are_content):
        """Per associated attribute: its group table, harm and practical significance; for
        those that flag, each row's cell ratio (capped at 1) and whether the shortcut fails it.
        Returns (ratio rows, flag rows, their indices into `tested`, group tables)."""
        p = self.params
        ratio_rows, flag_rows, which = [], [], []
        groups_info = {}
        for j, (g, _, st, table) in enumerate(tested):
            if not st["associated"]:
                continue
            expected = np.outer(table.sum(1), table.sum(0)) / n
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(expected > 0, table / expected, 1.0)
            under = (ratio < p.underrep_ratio) & (expected >= p.min_expected) & (table > 0)
            groups_info[st["attribute"]] = self._group_table(
                g, table, expected, ratio, under, y, correct, class_names, st["strong"]
            )
            st.update(self._harm(g, y, under, correct))
            st["is_content"] = bool(columns_are_content and st["source"] == "metadata")
            st["practically_significant"] = bool(
                not st["is_content"]
                and st["accuracy_lift"] >= p.min_accuracy_lift
                and (st["harm_p_value"] is None or st["harm_p_value"] < p.harm_alpha)
                and (st["accuracy_gap"] is None or st["accuracy_gap"] >= p.min_accuracy_gap)
            )
            if st["strong"] and st["redundant_with"] is None and st["practically_significant"]:
                cell_ratio = ratio[g.codes, y]
                ratio_rows.append(np.minimum(cell_ratio, 1.0))
                # the rows the shortcut fails on: in an under-represented cell and, given
                # out-of-sample pred_probs, misclassified there (a row of a rare cell the model
                # gets right needs no decision; rare cells of any property are also atypical
                # rows, so the flag needs the failure, not only the rarity)
                fails = under[g.codes, y]
                if correct is not None:
                    fails = fails & (correct == 0)
                flag_rows.append(fails)
                which.append(j)
        return ratio_rows, flag_rows, which, groups_info

    @staticmethod
    def _harm(g, y, under, correct) -> dict:
        """Does the shortcut cost accuracy? Out-of-sample accuracy of the rows in the under-
        represented cells against the other rows of the same labels, and the one-sided
        hypergeometric p-value of the cells' errors (None without pred_probs or cells)."""
        out = {"under_accuracy": None, "rest_accuracy": None, "accuracy_gap": None}
        out["harm_p_value"] = None
        in_under = under[g.codes, y]
        labels_with = np.flatnonzero(under.any(0))
        pool = np.isin(y, labels_with)
        if correct is None or not in_under.any() or not (pool & ~in_under).any():
            return out
        from scipy.stats import hypergeom

        err = 1.0 - correct
        n_pool, e_pool = int(pool.sum()), int(err[pool].sum())
        n_u, e_u = int(in_under.sum()), int(err[in_under].sum())
        rest = pool & ~in_under
        out["under_accuracy"] = 1.0 - e_u / n_u
        out["rest_accuracy"] = 1.0 - float(err[rest].mean())
        out["accuracy_gap"] = out["rest_accuracy"] - out["under_accuracy"]
        out["harm_p_value"] = float(hypergeom.sf(e_u - 1, n_pool, e_pool, n_u))
        return out

    def _group_table(self, g, table, expected, ratio, under, y, correct, class_names, strong):
        """The label x value table of one attribute, with out-of-sample accuracy per cell."""
        C = table.shape[1]
        n = table.sum()
        label_counts = table.sum(0)
        acc = None
        if correct is not None:
            hits = np.bincount(g.codes * C + y, weights=correct, minlength=table.size).reshape(
                table.shape
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                acc = np.where(table > 0, hits / np.maximum(table, 1), np.nan)
        a_idx, c_idx = np.nonzero(table)
        cells = []
        for a, c in zip(a_idx.tolist(), c_idx.tolist()):  # non-empty cells: groups x classes
            cells.append(
                {
                    "label": class_names[c],
                    "value": g.levels[a],
                    "count": int(table[a, c]),
                    "share": float(table[a, c] / n),
                    "label_share": float(table[a, c] / label_counts[c]),
                    "expected": float(expected[a, c]),
                    "ratio": float(ratio[a, c]),
                    "accuracy": None if acc is None else float(acc[a, c]),
                    "under_represented": bool(under[a, c]),
                }
            )
        cells.sort(key=lambda r: (r["label"], r["value"]))
        if len(cells) > self.params.max_table_rows:
            cells.sort(key=lambda r: r["ratio"])
            cells = cells[: self.params.max_table_rows]
        worst = None
        if acc is not None:
            big = [r for r in cells if r["count"] >= max(5, self.params.min_expected)] or cells
            worst = min(big, key=lambda r: r["accuracy"])
        return {
            "strong": strong,
            "table": cells,
            "worst_group": worst,
            "worst_group_accuracy": None if worst is None else worst["accuracy"],
            "num_under_represented_rows": int(table[under].sum()),
        }


# --- spurious_token ------------------------------------------------------------------------------
def _row_cells(tested, which, ratio_rows, flag_rows, lab, y, C: int) -> tuple:
    """Per row: (score, is_issue, attribute, value, group share) of its most under-represented
    cell among the flagging attributes (flagged cells first, then the lowest ratio)."""
    n = int(lab.sum())
    score = np.ones(len(lab))
    is_issue = np.zeros(len(lab), dtype=bool)
    attribute = np.full(len(lab), None, dtype=object)
    value = np.full(len(lab), None, dtype=object)
    share = np.full(len(lab), np.nan)
    if ratio_rows:
        R = np.vstack(ratio_rows)  # [J, n]
        F = np.vstack(flag_rows)
        # Rank cells: flagged ones first, then by lowest ratio.
        best = np.argmin(np.where(F, R - 2.0, R), axis=0)
        cols = np.arange(n)
        flagged = F[best, cols]
        idx = np.flatnonzero(lab)
        score[idx] = R[best, cols]
        is_issue[idx] = flagged
        label_counts = np.bincount(y, minlength=C)
        for jj, j in enumerate(which):  # one pass per strong attribute, vectorised within
            g, _, st, table = tested[j]
            rows = flagged & (best == jj)
            attribute[idx[rows]] = st["attribute"]
            value[idx[rows]] = np.asarray(g.levels, dtype=object)[g.codes[rows]]
            share[idx[rows]] = table[g.codes[rows], y[rows]] / label_counts[y[rows]]
    return score, is_issue, attribute, value, share


def _association_lists(associated: list[dict]) -> dict:
    """The names of the associated attributes, the strong ones, those that flag and the strong
    ones that do not (not practically significant)."""
    return {
        "associated": [st["attribute"] for st in associated],
        "strong": [st["attribute"] for st in associated if st["strong"]],
        "flagging": [
            st["attribute"]
            for st in associated
            if st["strong"] and not st["redundant_with"] and st["practically_significant"]
        ],
        "not_practically_significant": [
            st["attribute"]
            for st in associated
            if st["strong"] and not st["redundant_with"] and not st["practically_significant"]
        ],
    }


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
        "accuracy_lift": (acc - base) / (1 - base) if base < 1 else 0.0,
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
        n = len(labels)
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
        vocab_o = np.asarray(vocab, dtype=object)
        names = np.asarray(class_names, dtype=object)

        cue = np.full(n, None, dtype=object)
        cue[own_j >= 0] = vocab_o[own_j[own_j >= 0]]
        cue_label = np.full(n, None, dtype=object)
        cue_label[carries] = names[labels[carries]]
        counter = np.full(n, None, dtype=object)
        okc = other_j >= 0
        counter[okc] = vocab_o[other_j[okc]]
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
            "rows_with_counter_cue": int((lab & okc).sum()),
            "cue_coverage": coverage,
            "bag_of_words": bow,
            "lexical_labels": bool(lexical),
            "harm": harm,
            "practically_significant": bool(significant),
        }
        if lexical:
            info["note"] = self._lexical_note(bow, bar, model_lift, words_decide, coverage)
        elif not significant:
            info["note"] = (
                f"the model's out-of-sample accuracy on the counter-examples "
                f"({harm['counter_accuracy']:.3f}) is not below the other rows' "
                f"({harm['rest_accuracy']:.3f}) by {p.min_accuracy_gap:g} at p < "
                f"{p.harm_alpha:g} (p = {harm['harm_p_value']:.3g}): the cues cost nothing "
                "here; cues listed, rows scored, none flagged"
            )
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
            model_lift = (acc_m - base_m) / (1 - base_m) if base_m < 1 else 0.0
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

    @staticmethod
    def _harm(ctx, counter: np.ndarray) -> dict:
        """Do the cues cost accuracy? Out-of-sample accuracy of the counter-examples (labelled
        rows that carry a cue of another label) against the other labelled rows, and the
        one-sided hypergeometric p-value of their errors (None without pred_probs, or when
        either side is empty)."""
        from scipy.stats import hypergeom

        out = {"counter_rows": int(counter.sum()), "counter_accuracy": None}
        out |= {"rest_accuracy": None, "accuracy_gap": None, "harm_p_value": None}
        lab = ctx.labels >= 0
        rest = lab & ~counter
        if ctx.missing(frozenset({Requires.PRED_PROBS})) is not None:
            return out
        if not counter.any() or not rest.any():
            return out
        wrong = lab & (np.asarray(ctx.pred_probs).argmax(1) != ctx.labels)
        n, e = int(lab.sum()), int(wrong.sum())
        n_c, e_c = int(counter.sum()), int(wrong[counter].sum())
        out["counter_accuracy"] = 1.0 - e_c / n_c
        out["rest_accuracy"] = 1.0 - int(wrong[rest].sum()) / int(rest.sum())
        out["accuracy_gap"] = out["rest_accuracy"] - out["counter_accuracy"]
        out["harm_p_value"] = float(hypergeom.sf(e_c - 1, n, e, n_c))
        return out
