"""spurious_attribute: metadata columns and derived properties that predict the label alone.

Tests every metadata column and derived property (auditor/properties.py) against the label and
flags the under-represented groups of a strongly associated attribute (the rows a shortcut
fails on).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import Field

from ...store import schema as S
from ..base import FINDING, Auditor, AuditResult, Params, ReportSection, Requires, register
from ..properties import Groups, context_properties, discretize
from .stats import (
    accuracy_lift,
    association_stats,
    conditional_mutual_information,
    content_share_of_columns,
    contingency,
    cv_attribute_accuracy,
    error_excess,
    majority_baseline,
)


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
                "accuracy_lift": accuracy_lift(acc, baseline),
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
        under_acc, rest_acc, gap, p_value = error_excess(1.0 - correct, in_under, pool)
        out.update(under_accuracy=under_acc, rest_accuracy=rest_acc, accuracy_gap=gap)
        out["harm_p_value"] = p_value
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
