"""The HTML/JSON report: bounded, standalone, generic over the store's tables.

`seed_audited_store` writes a store as an audit, repair and export would leave it (samples, an
embedding, issues for several auditors with planted worst rows, drift and spurious info, slices,
edits, reviews), directly through SQL, so the report is tested without depending on any
particular auditor's code. One test also goes through the real runner with a probe auditor.
"""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from helpers import make_store

from datacure.report import build_summary, render_html, write_report
from datacure.store import Store, datadef

CLASSES = ["world", "sports", "business", "scitech"]
WORDS = np.array(
    [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "match",
        "team",
        "market",
        "stock",
        "chip",
        "model",
        "river",
        "city",
    ]
)


def seed_audited_store(path, n: int = 2000, dim: int = 32, seed: int = 0, image_root=None) -> dict:
    """A store with one audit run, edits and an export manifest; returns the planted truth.

    Vectorised throughout (used by bench/report_scale.py at 100k rows and beyond)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    words = WORDS[rng.integers(0, len(WORDS), (n, 6))]
    text = (
        pl.Series([" ".join(w) for w in words.tolist()])
        if n <= 50_000
        else (
            pl.DataFrame({f"w{i}": words[:, i] for i in range(6)})
            .select(pl.concat_str(pl.all(), separator=" "))
            .to_series()
        )
    )
    frame = pl.DataFrame(
        {
            "text": text,
            "label": np.array(CLASSES)[y],
            "source": np.where(rng.random(n) < 0.9, np.array(["a", "b", "c", "d"])[y], "z"),
            "split": np.where(rng.random(n) < 0.8, "train", "test"),
        }
    )
    if image_root is not None:
        frame = frame.with_columns(pl.Series("image", [f"img{i % 3}.png" for i in range(n)]))
    # low-rank vectors: class centres in a 4-d latent, projected up, plus noise
    latent = rng.normal(size=(len(CLASSES), 4))[y] + rng.normal(scale=0.3, size=(n, 4))
    vectors = (latent @ rng.normal(size=(4, dim)) + rng.normal(scale=0.05, size=(n, dim))).astype(
        np.float32
    )
    st = make_store(path, frame, vectors, split_column="split", text="text")
    if image_root is not None:
        st.execute("ALTER TABLE samples ADD COLUMN IF NOT EXISTS image_path VARCHAR")
        st.execute("UPDATE samples SET image_path = ? || '/' || image", [str(image_root)])
        datadef.record(st, image="image")  # the definition now names the image column
    rid = st.execute("SELECT row_id FROM samples ORDER BY row_id").fetchnumpy()["row_id"]
    flipped = rid[rng.choice(n, size=max(10, n // 50), replace=False)]
    worst = flipped[:5]
    label_score = rng.uniform(0.3, 1.0, n)
    is_flip = np.isin(rid, flipped)
    label_score[is_flip] = rng.uniform(0.02, 0.2, is_flip.sum())
    label_score[np.searchsorted(rid, worst)] = np.linspace(0.0, 0.01, len(worst))
    suggested = np.array(CLASSES)[(y + 1) % len(CLASSES)]
    tables = []
    tables.append(
        pl.DataFrame(
            {
                "auditor": "label",
                "row_id": rid,
                "is_issue": is_flip,
                "score": label_score,
                "details": pl.select(
                    pl.format(
                        '{{"suggested_label": "{}", "suggested_label_prob": 0.9}}',
                        pl.Series(suggested),
                    )
                ).to_series(),
            }
        )
    )
    out_score = rng.beta(5, 1, n)
    tables.append(
        pl.DataFrame(
            {
                "auditor": "outlier",
                "row_id": rid,
                "is_issue": out_score < 0.15,
                "score": out_score,
                "details": None,
            }
        )
    )
    drift_score = rng.uniform(0, 1, n)
    tables.append(
        pl.DataFrame(
            {
                "auditor": "split_drift",
                "row_id": rid,
                "is_issue": drift_score < 0.01,
                "score": drift_score,
                "details": '{"nearest_reference": 3}',
            }
        )
    )
    attr_score = np.where(frame["source"].to_numpy() == "z", 0.1, 0.9)
    tables.append(
        pl.DataFrame(
            {
                "auditor": "spurious_attribute",
                "row_id": rid,
                "is_issue": attr_score < 0.5,
                "score": attr_score,
                "details": '{"attribute": "source"}',
            }
        )
    )
    issues = pl.concat([t.with_columns(pl.col("details").cast(pl.Utf8)) for t in tables])
    groups = [
        {"label": c, "value": v, "count": 100, "accuracy": 0.95 if v != "z" else 0.4}
        for c in CLASSES
        for v in ("a", "b", "c", "d", "z")
    ]
    infos = {
        "label": {"method": "confident learning + kNN"},
        "outlier": {"k": 10},
        # the shapes auditor/drift.py and auditor/spurious.py write
        "split_drift": {
            "reference": "train",
            "alpha": 0.01,
            "correction": "benjamini-hochberg",
            "drifted_columns": [{"split": "test", "column": "source", "test": "chi2"}],
            "splits": {
                "test": {
                    "columns": {
                        "source": {
                            "test": "chi2",
                            "statistic": 41.2,
                            "p_value": 1e-9,
                            "p_adjusted": 2e-9,
                            "drifted": True,
                        },
                        "text_len": {
                            "test": "ks",
                            "statistic": 0.02,
                            "p_value": 0.8,
                            "p_adjusted": 0.8,
                            "drifted": False,
                        },
                    },
                    "label": {"test": "chi2", "statistic": 1.0, "p_value": 0.7, "drifted": False},
                    "embedding": {
                        "test": "classifier_auc",
                        "auc": 0.71,
                        "p_value": 0.001,
                        "drifted": True,
                    },
                }
            },
        },
        "spurious_attribute": {
            "majority_baseline": 0.25,
            "associated": ["source"],
            "attributes": [
                {
                    "attribute": "source",
                    "cv_accuracy": 0.9,
                    "majority_baseline": 0.25,
                    "cramers_v": 0.85,
                    "associated": True,
                    "strong": True,
                },
                {
                    "attribute": "text_len",
                    "cv_accuracy": 0.26,
                    "majority_baseline": 0.25,
                    "cramers_v": 0.01,
                    "associated": False,
                    "strong": False,
                },
            ],
            "groups": {
                "source": {
                    "strong": True,
                    "table": groups,
                    "worst_group": groups[4],
                    "worst_group_accuracy": 0.4,
                }
            },
        },
    }
    with st.transaction():
        st.execute("INSERT INTO runs VALUES (1, now(), now(), '[]', '{}', 'test', 'ok')")
        st.con.register("_iss", issues.to_arrow())
        st.execute(
            "INSERT INTO issues SELECT 1, auditor, row_id, is_issue, score, details::JSON FROM _iss"
        )
        st.con.unregister("_iss")
        for name, info in infos.items():
            st.execute(
                "INSERT INTO issue_summary SELECT 1, ?, 0.8, count(*) FILTER (WHERE is_issue), ? "
                "FROM issues WHERE auditor = ?",
                [name, json.dumps(info), name],
            )
        st.execute(
            "INSERT INTO skipped_auditors VALUES (1, 'contamination', "
            "'needs a benchmark: pass --benchmark FILE')"
        )
        st.execute(
            "INSERT INTO slices VALUES (1, 'scitech-0', 'slice', "
            "'scitech rows mentioning chip, model', 40, 0.45, ?, '{}')",
            [rid[:40].tolist()],
        )
        st.execute(
            "INSERT INTO edits SELECT row_number() OVER (), 1, row_id, 'relabel', "
            "json_extract_string(details, '$.suggested_label'), 'label issue', 'label', 'pending', "
            "'{}', now() FROM issues WHERE auditor = 'label' AND is_issue"
        )
        st.execute(
            "INSERT INTO reviews VALUES (?, 'label', 'reject', NULL, now(), 'fine as is')",
            [int(worst[0])],
        )
        st.meta_set(
            "export_manifest",
            {"manifest": {"counts": {"relabel": len(flipped)}, "seed": 0, "splits": {"train": 10}}},
        )
    return {"store": st, "flipped": flipped, "worst": worst, "row_ids": rid}


@pytest.fixture
def audited(tmp_path):
    t = seed_audited_store(tmp_path / "r.duckdb")
    yield t
    t["store"].close()


EXTERNAL = re.compile(
    r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""", re.IGNORECASE
)


def test_report_sections_and_content(audited, tmp_path):
    st = audited["store"]
    out = write_report(st, tmp_path / "report.html", json_path=tmp_path / "report.json")
    doc = out.read_text()
    for sid in (
        "overview",
        "auditors",
        "auditor-details",
        "drift",
        "spurious",
        "slices",
        "embedding-map",
        "edits",
        "reviews",
        "export",
    ):
        assert f'data-section="{sid}"' in doc, sid
    # the planted worst label errors lead the label auditor's examples, with a suggested label
    summary = json.loads((tmp_path / "report.json").read_text())
    label = next(a for a in summary["auditors"] if a["name"] == "label")
    shown = [e["row_id"] for e in label["examples"]]
    assert shown[:5] == [int(r) for r in audited["worst"]]
    assert all(
        e["suggested_label"] in ("world", "sports", "business", "scitech")
        for e in label["examples"]
    )
    assert label["flagged"] == len(audited["flipped"])
    assert label["share"] == pytest.approx(len(audited["flipped"]) / 2000)
    assert sum(label["histogram"]["flagged"]) == len(audited["flipped"])
    assert sum(label["histogram"]["unflagged"]) + len(audited["flipped"]) == 2000
    # the skipped auditor says why; drift and spurious views come from their info
    assert "not run: needs a benchmark" in doc
    assert "chi2" in doc and 'data-heatmap="source"' in doc
    assert "Columns (1 of 2 tests drifted)" in doc and "classifier_auc" in doc
    assert "worst group: label" in doc and "Associated with the label: <b>source</b>" in doc
    assert "scitech rows mentioning chip, model" in doc
    # embedding map coloured by flags: every sampled row in exactly one group
    m = summary["embedding_map"]
    assert m["sampled"] == 2000 and sum(g["count"] for g in m["legend"]) == 2000
    assert len(m["x"]) == len(m["group"]) == 2000
    assert min(m["x"]) >= 0 and max(m["x"]) <= 1
    # a row flagged by several auditors is coloured by the rarest flag: label (2%) over
    # spurious_attribute (10%)
    names = [g["group"] for g in m["legend"]]
    flipped = {int(r) for r in audited["flipped"]}
    rows = audited["row_ids"].tolist()
    assert {names[g] for r, g in zip(rows, m["group"]) if r in flipped} == {"label"}
    assert summary["edits"]["total"] == len(audited["flipped"])
    assert summary["export_manifest"]["counts"]["relabel"] == len(audited["flipped"])
    # standalone: no network assets, a CSP that forbids them
    assert not EXTERNAL.search(doc)
    assert "default-src 'none'" in doc


def test_json_equals_html_summary_without_render_only_keys(audited, tmp_path):
    st = audited["store"]
    write_report(st, tmp_path / "r.html", json_path=tmp_path / "r.json")
    js = json.loads((tmp_path / "r.json").read_text())
    assert "_thumb" not in json.dumps(js)
    # counts agree with SQL over the store
    for a in js["auditors"]:
        n = st.scalar("SELECT count(*) FROM issues WHERE auditor = ? AND is_issue", [a["name"]])
        assert a["flagged"] == n
    assert js["flagged_any"] == st.scalar(
        "SELECT count(DISTINCT row_id) FROM issues WHERE is_issue"
    )
    assert js["skipped"] == [
        {
            "name": "contamination",
            "reason": "needs a benchmark: pass --benchmark FILE",
            "description": js["skipped"][0]["description"],
        }
    ]


def test_report_size_is_bounded(tmp_path):
    """Ten times the rows, about the same report: summaries and samples, not the data."""
    sizes = []
    for n in (2000, 20000):
        t = seed_audited_store(tmp_path / f"s{n}.duckdb", n=n)
        s = build_summary(t["store"], map_points=1000)
        sizes.append(len(render_html(s)))
        t["store"].close()
    assert sizes[1] < 1.25 * sizes[0], sizes


def test_text_is_escaped(tmp_path):
    st = make_store(
        tmp_path / "x.duckdb",
        pl.DataFrame({"text": ["<script>alert(1)</script>", "b", "c"], "label": [0, 1, 0]}),
        text="text",
    )
    with st.transaction():
        st.execute("INSERT INTO runs VALUES (1, now(), now(), '[]', '{}', 't', 'ok')")
        st.execute(
            "INSERT INTO issues SELECT 1, 'label', row_id, row_id = 0, 0.5, NULL FROM samples"
        )
        st.execute("INSERT INTO issue_summary VALUES (1, 'label', 0.5, 1, '{}')")
    doc = render_html(build_summary(st))
    assert "<script>alert(1)" not in doc and "&lt;script&gt;alert(1)" in doc
    st.close()


def test_no_run_yet_still_reports(tmp_path):
    st = make_store(
        tmp_path / "y.duckdb", pl.DataFrame({"text": ["a", "b"], "label": [0, 1]}), text="text"
    )
    doc = render_html(build_summary(st))
    assert "No audit has run on this store yet" in doc
    assert 'data-section="overview"' in doc and 'data-section="auditors"' not in doc
    st.close()


def test_image_thumbnails(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(2):  # img2.png is missing on purpose
        Image.fromarray(np.full((40, 40, 3), 60 * (i + 1), dtype=np.uint8)).save(
            root / f"img{i}.png"
        )
    t = seed_audited_store(tmp_path / "i.duckdb", n=300, image_root=root)
    doc = render_html(build_summary(t["store"]))
    assert doc.count('src="data:image/png;base64,') >= 3
    assert "no image:" in doc  # the missing file is reported, not fatal
    t["store"].close()


def test_report_of_a_real_run(tmp_path):
    """Through the runner: extra result columns become details the report reads."""
    from datacure.auditor.base import REGISTRY, Auditor, AuditResult, Requires, register
    from datacure.auditor.runner import run_audit

    class _Flip(Auditor):
        name = "_report_probe"
        requires = frozenset({Requires.LABELS})

        def audit(self, ctx):
            bad = ctx.row_ids % 7 == 0
            return AuditResult(
                {
                    "row_id": ctx.row_ids,
                    "is_issue": bad,
                    "score": np.where(bad, 0.1, 0.9),
                    "suggested_label": np.where(bad, "b", "a"),
                },
                score=0.9,
            )

    register(_Flip)
    try:
        st = make_store(
            tmp_path / "z.duckdb",
            pl.DataFrame({"text": [f"t{i}" for i in range(50)], "label": ["a", "c"] * 25}),
            text="text",
        )
        run_audit(st, auditors=["_report_probe"])
        s = build_summary(st)
        a = s["auditors"][0]
        assert a["flagged"] == 8 and {e["suggested_label"] for e in a["examples"]} == {"b"}
        st.close()
    finally:
        REGISTRY.pop("_report_probe", None)


def test_cli_report(audited, tmp_path):
    from typer.testing import CliRunner

    from datacure import cli

    path = str(audited["store"].path)
    audited["store"].close()
    res = CliRunner().invoke(
        cli.app,
        [
            "report",
            "--db",
            path,
            "--out",
            str(tmp_path / "c.html"),
            "--json",
            str(tmp_path / "c.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "c.html" in res.output
    assert (tmp_path / "c.html").stat().st_size > 10_000
    assert json.loads((tmp_path / "c.json").read_text())["run"]["run_id"] == 1
    with Store(path, read_only=True):
        pass  # the store is intact and readable


def test_pca2_matches_svd():
    from datacure.report.embedding_map import pca2 as _pca2

    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 20)) * np.linspace(5, 0.1, 20)  # clear leading axes
    x -= x.mean(0)
    xy, ev = _pca2(x)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    ref = x @ vt[:2].T
    for i in range(2):
        assert abs(np.corrcoef(xy[:, i], ref[:, i])[0, 1]) > 0.999
    assert ev == pytest.approx((s[:2] ** 2 / (s**2).sum()).tolist(), rel=1e-4)


def test_manifest_option(audited, tmp_path):
    from typer.testing import CliRunner

    from datacure import cli

    path = str(audited["store"].path)
    audited["store"].close()
    man = tmp_path / "export" / "manifest.json"
    man.parent.mkdir()
    man.write_text(
        json.dumps(
            {
                "splits": {"train": {"rows": 7}},
                "edits_applied": {"drop": {"exact_duplicate": 3}},
                "seed": 0,
            }
        )
    )
    res = CliRunner().invoke(
        cli.app, ["report", "--db", path, "--out", str(tmp_path / "m.html"), "--manifest", str(man)]
    )
    assert res.exit_code == 0, res.output
    doc = (tmp_path / "m.html").read_text()
    assert "Edits applied" in doc and "exact_duplicate" in doc and "Rows per split" in doc
    res = CliRunner().invoke(
        cli.app,
        [
            "report",
            "--db",
            path,
            "--out",
            str(tmp_path / "n.html"),
            "--manifest",
            str(tmp_path / "nope.json"),
        ],
    )
    from datacure.store.errors import InputError  # cli.main turns it into exit code 2

    assert isinstance(res.exception, InputError) and not (tmp_path / "n.html").exists()
