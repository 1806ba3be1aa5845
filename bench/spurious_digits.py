"""Benchmark: `spurious_attribute` on seeded coloured digits (95% colour-label tie).

Data: generators/synthetic.py `coloured_digits`: sklearn digits 0-4 as 32x32 RGB PNGs, each class on
its own background colour 95% of the time (red, green, blue, yellow, purple), another colour
otherwise. Ingested like a user's image table (`datacure ingest data.csv --image image`), with
the `color` column as metadata; the ground truth (`aligned`) stays out of the store. Vectors for
the out-of-sample accuracy per group: the images downsampled to 8x8x3 pixels (a model that can
see the colour, as a CNN can).

Checks: the colour is named both as the `color` column and as the derived per-channel colour
properties (red / green / blue, read from the pixels); the flagged rows are the minority-cell
rows the model misclassifies out of sample (the rows the shortcut fails on): precision against
`not aligned`, recall against every minority row and against the misclassified ones; the group
table with accuracy per cell and the
worst-group accuracy. Anchor, measured in the same process on the same properties: cleanlab's
`SpuriousCorrelations` (Datalab's check: GaussianNB per property, scores against a baseline
computed as argmax(class counts) / N, i.e. the majority class's *index* over N).

    .venv/bin/python bench/spurious_digits.py [--rows 3000]

Writes bench/results/spurious_digits.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np
import polars as pl
from common import OUT as BENCH_OUT
from common import table, write_results

OUT = BENCH_OUT / "digits"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3000)
    args = ap.parse_args()
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    from datacure.auditor.properties import context_properties
    from datacure.auditor.runner import run_audit
    from datacure.generators.synthetic import coloured_digits, write_image_table
    from datacure.store import Store
    from datacure.store.ingest import ingest

    classes = (0, 1, 2, 3, 4)
    colours = ("red", "green", "blue", "yellow", "purple")
    imgs, frame = coloured_digits(n=args.rows, correlation=0.95, classes=classes, colours=colours)
    if OUT.exists():
        shutil.rmtree(OUT)
    t0 = time.perf_counter()
    csv = write_image_table(imgs, frame.drop("aligned"), OUT / "src")
    st = Store(OUT / "digits.duckdb")
    ingest(st, csv, label="label", image="image")
    small = imgs.reshape(len(imgs), 8, 4, 8, 4, 3).mean((2, 4)).reshape(len(imgs), -1) / 255
    rid = st.execute("SELECT row_id FROM samples ORDER BY row_id").fetchnumpy()["row_id"]
    with st.transaction():
        st.register_embedding("pixels8", small.shape[1], "pixels-8x8", "image", "image", False)
        st.append_embeddings("pixels8", rid, small.astype(np.float32))
    print(f"{args.rows} images written and ingested in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    rep = run_audit(st, auditors=["spurious_attribute"])
    secs = rep.outcomes[0].seconds
    info = json.loads(st.scalar("SELECT info FROM issue_summary"))
    print(f"spurious_attribute: {secs:.1f} s (incl. reading {args.rows} images and CV pred_probs)")
    print(f"majority baseline (class frequency): {info['majority_baseline']:.3f}")
    print(f"  {'attribute':<13}{'source':<10}{'V':>6}{'CV acc':>8}{'MI':>7}  verdict")
    for a in info["attributes"]:
        verdict = "strong" if a["strong"] else "associated" if a["associated"] else "-"
        if a.get("redundant_with"):
            verdict += f" (explained by {a['redundant_with']})"
        print(
            f"  {a['attribute']:<13}{a['source']:<10}{a['cramers_v']:>6.3f}"
            f"{a['cv_accuracy']:>8.3f}{a['mutual_information']:>7.3f}  {verdict}"
        )
    named_col = "color" in info["strong"]
    named_prop = sorted({"red", "green", "blue"} & set(info["strong"]))
    print(f"colour named: metadata `color` {named_col}; per-channel properties {named_prop}")

    rows = st.polars(
        "SELECT row_id, is_issue, details->>'attribute' AS attribute FROM issues ORDER BY row_id"
    )
    flagged = rows["is_issue"].to_numpy()
    minority = ~frame["aligned"].to_numpy()
    pp = st.polars("SELECT pred_probs FROM predictions ORDER BY row_id")["pred_probs"]
    y_code = np.searchsorted(np.unique(frame["label"].to_numpy()), frame["label"].to_numpy())
    failed = minority & (np.asarray(pp.to_list()).argmax(1) != y_code)
    tp = (flagged & minority).sum()
    print(
        f"flagged {flagged.sum()} rows; minority cells (colour not the class's) {minority.sum()}: "
        f"recall {tp / minority.sum():.3f}, precision {tp / max(flagged.sum(), 1):.3f}; "
        f"misclassified minority rows {failed.sum()}: recall "
        f"{(flagged & failed).sum() / max(failed.sum(), 1):.3f}"
    )
    print(
        "  flagged under: "
        + ", ".join(
            f"{a} {n}"
            for a, n in rows.filter(pl.col("is_issue"))["attribute"]
            .value_counts(sort=True)
            .iter_rows()
        )
    )
    g = info["groups"]["color"]
    print(
        "group table for `color` (label x colour, non-empty cells, "
        "accuracy = CV logistic regression on pixels):"
    )
    for r in g["table"]:
        print(
            f"  label {r['label']} {r['value']:<7} n {r['count']:4d}  "
            f"{r['label_share']:6.1%} of label"
            f"  accuracy {r['accuracy']:.3f}"
            + ("  under-represented" if r["under_represented"] else "")
        )
    maj = [r for r in g["table"] if not r["under_represented"]]
    print(
        f"worst-group accuracy {g['worst_group_accuracy']:.3f} ({g['worst_group']['label']} on "
        f"{g['worst_group']['value']}); majority cells' accuracy "
        f"{sum(r['accuracy'] * r['count'] for r in maj) / sum(r['count'] for r in maj):.3f}"
    )

    # --- the pixels alone: without the `color` column, do the derived properties flag them? ----
    run_audit(
        st, auditors=["spurious_attribute"], config={"spurious_attribute": {"exclude": ["color"]}}
    )
    info2 = json.loads(st.scalar("SELECT info FROM issue_summary ORDER BY run_id DESC LIMIT 1"))
    f2 = st.polars(
        "SELECT is_issue FROM issues WHERE run_id = (SELECT max(run_id) FROM runs) ORDER BY row_id"
    )["is_issue"].to_numpy()
    tp2 = (f2 & minority).sum()
    print(
        f"\nwithout the `color` column: flagging attributes {info2['flagging']}; "
        f"flagged {f2.sum()}:"
        f" recall {tp2 / minority.sum():.3f}, precision {tp2 / max(f2.sum(), 1):.3f}"
    )

    # --- anchor: cleanlab's SpuriousCorrelations on the same derived properties --------------
    from cleanlab.datalab.internal.spurious_correlation import SpuriousCorrelations

    from datacure.auditor.context import AuditContext

    ctx = AuditContext(st)
    props = context_properties(ctx).drop(["width", "height", "size", "aspect_ratio"])
    codes = pl.Series(frame["color"]).cast(pl.Categorical).to_physical()
    data = props.with_columns(pl.Series("color", codes)).to_pandas()
    y = frame["label"].to_numpy()
    t0 = time.perf_counter()
    sc = SpuriousCorrelations(data=data, labels=y)
    scores = sc.calculate_correlations()
    print(
        f"\nanchor: cleanlab SpuriousCorrelations {time.perf_counter() - t0:.1f} s; its baseline "
        f"{sc._get_baseline():.4f} (argmax index / N) vs the class frequency "
        f"{np.bincount(y).max() / len(y):.4f}"
    )
    print(
        "  cleanlab score per property (lower = more label-correlated): "
        + ", ".join(f"{p} {s:.3f}" for p, s in scores.sort_values("score").itertuples(index=False))
    )
    t_cl = time.perf_counter() - t0
    cl = dict(scores.itertuples(index=False))
    attrs = [
        [
            a["attribute"],
            a["source"],
            round(a["cramers_v"], 3),
            round(a["cv_accuracy"], 3),
            round(a["mutual_information"], 3),
            ("strong" if a["strong"] else "associated" if a["associated"] else "-")
            + (f" (explained by {a['redundant_with']})" if a.get("redundant_with") else ""),
            None if a["attribute"] not in cl else round(float(cl[a["attribute"]]), 3),
        ]
        for a in info["attributes"]
    ]
    freq = float(np.bincount(y).max() / len(y))
    write_results(
        "spurious_digits",
        {
            "tables": [
                table(
                    f"spurious_attribute on {args.rows:,} coloured digits (95% colour-label tie)",
                    [
                        "attribute",
                        "source",
                        "Cramer's V",
                        "CV accuracy",
                        "MI",
                        "verdict",
                        "cleanlab score (lower = more correlated)",
                    ],
                    attrs,
                    note=f"majority baseline (class frequency) {info['majority_baseline']:.3f}; "
                    f"cleanlab's baseline on the same labels {sc._get_baseline():.4f} (argmax "
                    f"index / N, against the class frequency {freq:.4f}).",
                ),
                table(
                    "Flagged rows against the minority cells (colour not the class's)",
                    [
                        "run",
                        "flagged",
                        "recall (minority rows)",
                        "recall (misclassified minority rows)",
                        "precision",
                    ],
                    [
                        [
                            "with the color column",
                            int(flagged.sum()),
                            round(tp / minority.sum(), 3),
                            round((flagged & failed).sum() / max(failed.sum(), 1), 3),
                            round(tp / max(flagged.sum(), 1), 3),
                        ],
                        [
                            "pixels alone (color column excluded)",
                            int(f2.sum()),
                            round(tp2 / minority.sum(), 3),
                            round((f2 & failed).sum() / max(failed.sum(), 1), 3),
                            round(tp2 / max(f2.sum(), 1), 3),
                        ],
                    ],
                    note="a row is flagged when it sits in an under-represented cell and the "
                    "model misclassifies it out of sample (the rows the shortcut fails on); "
                    f"{int(failed.sum())} of {int(minority.sum())} minority rows are "
                    "misclassified here",
                ),
            ],
            "worst_group_accuracy": g["worst_group_accuracy"],
            "worst_group": g["worst_group"],
            "majority_cells_accuracy": sum(r["accuracy"] * r["count"] for r in maj)
            / sum(r["count"] for r in maj),
            "seconds": {"spurious_attribute": secs, "cleanlab_spurious_correlations": t_cl},
            "colour_named": {"color_column": named_col, "channel_properties": named_prop},
        },
        inputs={
            "rows": args.rows,
            "classes": list(classes),
            "colours": list(colours),
            "correlation": 0.95,
        },
        notes=[
            f"One run, one process; load average {load0:.1f} at the start and "
            f"{os.getloadavg()[0]:.1f} at the end (2 shared cores).",
            "Accuracy per group: cross-validated logistic regression on 8x8x3 pixels.",
        ],
        started=started,
        title="Spurious attribute: coloured digits, datacure vs cleanlab SpuriousCorrelations",
    )


if __name__ == "__main__":
    main()
