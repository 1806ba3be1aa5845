"""The DataDefinition: what ingest writes is what a user expects of a mixed table, options
override inference, every consumer reads it, and stores written before it get one."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest
from helpers import make_store, shared_data

from datacure.auditor.context import AuditContext
from datacure.auditor.runner import run_audit
from datacure.generators.synthetic import coloured_digits, write_image_table
from datacure.repair.export import export, export_columns
from datacure.store import Store, datadef
from datacure.store import schema as S
from datacure.store.ingest import ingest, ingest_frame

WORDS = "the a cat dog sat ran on under mat tree house quickly slowly red blue small big".split()


def _mixed(n: int = 120, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, 8)) + f" {i}" for i in range(n)]
    return pl.DataFrame(
        {
            "text": texts,
            "label": rng.choice(["pos", "neg"], n),
            "price": rng.normal(10, 2, n),
            "colour": rng.choice(["red", "green", "blue"], n),
            "uid": [f"u{i:05d}" for i in range(n)],
            "customer_id": np.arange(n, dtype=np.int64) * 7,
            "stars": rng.integers(1, 6, n),
            "verified": rng.integers(0, 2, n).astype(bool),
            "when": [dt.datetime(2024, 1, 1) + dt.timedelta(hours=int(h)) for h in range(n)],
            "emb": [rng.normal(size=4).astype(np.float32).tolist() for _ in range(n)],
            "tags": [["a", "b"][: int(i % 3)] for i in range(n)],
            "_note": ["x"] * n,
        }
    )


def _roles(d) -> dict[str, tuple[str, str]]:
    return {c.name: (c.role, c.type) for c in d.columns}


def test_mixed_table_is_described_as_a_user_expects(db_path):
    with Store(db_path) as st:
        ingest_frame(st, _mixed(), split="train", text="text", vector="emb")
        d = st.data_definition()
        assert _roles(d) == {
            "row_id": ("id", "identifier"),
            "split": ("split", "categorical"),
            "label": ("label", "categorical"),
            "text": ("text", "text"),
            "price": ("metadata", "numeric"),
            "colour": ("metadata", "categorical"),
            "uid": ("metadata", "identifier"),
            "customer_id": ("metadata", "identifier"),  # a distinct integer named like an id
            "stars": ("metadata", "categorical"),  # a number with 5 values: a code
            "verified": ("metadata", "boolean"),
            "when": ("metadata", "datetime"),
            "tags": ("metadata", "nested"),
            "_note": ("ignored", "categorical"),
            "_content_hash": ("internal", "identifier"),
            "emb": ("vector", "vector"),  # lives in embeddings_user_emb, not in samples
        }
        assert (d.text_column, d.image_column, d.label_column) == ("text", None, "label")
        assert d.column("emb").dtype == "FLOAT[4]"
        assert d.added_columns == ["row_id", "split", "_content_hash"]
        # features: the metadata a drift or spurious test can look at (not nested, not vectors)
        assert d.features == ["price", "colour", "uid", "customer_id", "stars", "verified", "when"]
        # SQL users see it as the `columns` view
        rows = st.fetchall("SELECT name, role, type FROM columns ORDER BY name")
        assert {r[0]: (r[1], r[2]) for r in rows} == _roles(d)


def test_image_paths_and_renamed_columns(tmp_path, db_path):
    imgs, df = coloured_digits(n=30, seed=1)
    csv = write_image_table(imgs, df.with_columns(pl.lit("x").alias("split")), tmp_path)
    with Store(db_path) as st:
        ingest(st, csv, split="train")
        d = st.data_definition()
        r = _roles(d)
        assert r["image"] == ("image", "image") and r["image_path"] == ("image_path", "image")
        assert d.image_column == "image" and d.modality == "image"
        # a source column named like datacure's own is kept as <name>_source, and says so
        assert r["split_source"][0] == "metadata"
        assert d.column("split_source").source == "split"
        assert d.column(S.IMAGE_PATH).source is None
    # --image none: the path column is plain metadata (distinct strings: an identifier)
    with Store(tmp_path / "none.duckdb") as st:
        ingest(st, csv, split="train", image="none")
        d = st.data_definition()
        assert d.image_column is None and d.modality is None
        assert _roles(d)["image"] == ("metadata", "identifier")
        assert S.IMAGE_PATH not in d.names()


@pytest.mark.parametrize(
    ("opts", "want"),
    [
        # --text none: the free-text column stays a (text-typed) metadata column
        ({"text": "none"}, {"text_column": None, "text": ("metadata", "text")}),
        # --label none: the label-like column is left alone, the store is unlabelled
        ({"label": "none"}, {"label_column": None, "label": ("label", "categorical")}),
        # --label COL: the user's column is the label source, datacure copies it into `label`
        (
            {"label": "colour"},
            {"label_column": "colour", "colour": ("label", "categorical")},
        ),
        # --text COL picks the content column among several
        ({"text": "colour"}, {"text_column": "colour", "colour": ("text", "text")}),
    ],
)
def test_options_override_inference(db_path, opts, want):
    frame = _mixed(60).drop("emb", "tags")
    with Store(db_path) as st:
        ingest_frame(st, frame, split="train", **opts)
        d = st.data_definition()
        for key, value in want.items():
            got = getattr(d, key) if key.endswith("_column") else _roles(d)[key]
            assert got == value, key
        if opts.get("label") == "colour":
            assert S.LABEL in d.added_columns and d.label_sources == ["colour"]
        if opts.get("label") == "none":
            # `label` is datacure's (all NULL), not a source column of the user's
            assert S.LABEL in d.added_columns


def _drift_store(db_path):
    rng = np.random.default_rng(0)
    n = 400
    frame = pl.DataFrame(
        {
            "city": np.r_[rng.choice(["a", "b"], n), rng.choice(["c", "d"], n)],
            "x": rng.normal(size=2 * n),
            "label": rng.integers(0, 2, 2 * n),
            "part": ["train"] * n + ["test"] * n,
        }
    )
    return make_store(db_path, frame, split_column="part")


def _drift_columns(st) -> set[str]:
    info = json.loads(
        st.scalar(
            "SELECT info FROM issue_summary WHERE auditor = 'split_drift' "
            "ORDER BY run_id DESC LIMIT 1"
        )
    )
    return set(info["splits"]["test"]["columns"])


def test_consumers_follow_a_changed_role(db_path, tmp_path):
    """Give `city` another role in the definition: drift stops testing it, the audit context
    stops offering it as metadata, and export follows its origin."""
    st = _drift_store(db_path)
    try:
        assert run_audit(st, auditors=["split_drift"]).outcomes[0].status == "ok"
        assert _drift_columns(st) == {"city", "x"}
        assert AuditContext(st).metadata_columns == ["city", "x"]
        assert "city" in export_columns(st)

        d = st.data_definition()
        datadef.save(st, d.with_role("city", "internal", source=None))
        assert AuditContext(st).metadata_columns == ["x"]
        run_audit(st, auditors=["split_drift"])
        assert _drift_columns(st) == {"x"}
        assert "city" not in export_columns(st)
        export(st, tmp_path / "out", fmt="csv")
        assert "city" not in pl.read_csv(tmp_path / "out" / "test.csv").columns

        # a user's role survives a re-ingest of the same split
        extra = pl.DataFrame({"city": ["a"], "x": [0.0], "label": [1], "part": ["val"]})
        ingest_frame(st, extra, split_column="part")
        assert st.data_definition().column("city").role == "internal"
    finally:
        st.close()


def test_a_store_written_before_the_definition_gets_one(db_path):
    """Strip the definition and write the old meta keys, as ingest did before: reading derives
    the same definition, and opening for writing saves it."""
    frame = _mixed(60).drop("tags").rename({"label": "category"})
    with Store(db_path) as st:
        ingest_frame(st, frame, split="train", text="text", label="category", vector="emb")
        want = st.data_definition()
        legacy = {
            "text_column": "text",
            "image_column": None,
            "label_column": "category",
            "label_source_columns": ["category"],
            "vector_columns": ["emb"],
            "column_sources": {},
            "added_columns": ["row_id", "split", "label", "_content_hash"],
        }
        st.execute(f"DELETE FROM {S.META} WHERE key = ?", [S.DATA_DEFINITION])
        for k, v in legacy.items():
            st.meta_set(k, v)
    with Store(db_path, read_only=True) as st:
        assert st.meta_get(S.DATA_DEFINITION) is None
        assert st.data_definition() == want
        assert st.text_column() == "text" and st.label_column() == "category"
    with Store(db_path) as st:  # opened for writing: migrated
        assert datadef.DataDefinition.model_validate(st.meta_get(S.DATA_DEFINITION)) == want
        assert st.scalar("SELECT count(*) FROM columns") == len(want.columns)


def test_a_failed_ingest_leaves_the_definition_as_it_was(db_path):
    with Store(db_path) as st:
        ingest_frame(st, _mixed(40).drop("emb", "tags"), split="train")
        before = st.meta_get(S.DATA_DEFINITION)
        bad = pl.DataFrame({"text": ["a b c"], "label": [None], "new_col": [1]})
        with pytest.raises(Exception, match="empty"):
            ingest_frame(st, bad, split="test", label="label")
        assert st.meta_get(S.DATA_DEFINITION) == before


def test_sql_users_see_the_definition(tmp_path):
    """`datacure ingest` then `datacure sql 'SELECT ... FROM columns'`: the roles, read-only."""
    from hardening_util import run_cli

    csv = tmp_path / "train.csv"
    _mixed(40).drop("emb", "tags", "when").write_csv(csv)
    db = tmp_path / "s.duckdb"
    assert run_cli("ingest", csv, "--db", db, "--text", "text").code == 0
    r = run_cli(
        "sql", "SELECT name, role, type FROM columns ORDER BY name", "--db", db, "--format", "csv"
    )
    assert r.code == 0, r
    rows = dict(line.split(",", 1) for line in r.stdout.strip().splitlines()[1:])
    assert rows["text"] == "text,text" and rows["colour"] == "metadata,categorical"
    assert rows["row_id"] == "id,identifier" and rows["label"] == "label,categorical"


def test_an_old_store_opened_read_only_shows_the_columns_view(db_path):
    """A store written before the `columns` view and the definition existed: `datacure sql`
    opens it read-only, where DuckDB cannot create the view; it still answers from the derived
    definition, and the file is left as it was."""
    from datacure.store.query import run_sql

    with Store(db_path) as st:
        ingest_frame(st, _mixed(40).drop("emb", "tags"), split="train", text="text")
        want = {c.name: (c.role, c.type) for c in st.data_definition().columns}
        st.execute(f"DROP VIEW {S.COLUMNS}")
        st.execute(f"DELETE FROM {S.META} WHERE key = ?", [S.DATA_DEFINITION])
        st.meta_set("text_column", "text")
    rows = run_sql(str(db_path), "SELECT name, role, type FROM columns")
    assert {n: (r, t) for n, r, t in rows.iter_rows()} == want
    with Store(db_path, read_only=True) as st:  # nothing was written
        assert not st.table_exists(S.COLUMNS) and st.meta_get(S.DATA_DEFINITION) is None


def test_the_python_api_returns_the_definition(db_path):
    import datacure

    with Store(db_path) as st:
        ingest_frame(st, _mixed(40).drop("emb", "tags"), split="train", text="text")
        want = st.data_definition()
    d = datacure.open(db_path).definition()
    assert d == want and d.text_column == "text" and d.column("price").type == "numeric"


# The type rules on real data nobody tuned them on: the columns whose type a rule decides (the
# label and text columns are given), as a reader of each data set would type them.
REAL_SETS = {
    "noisy_ag_news": (
        ("noisy_ag_news", "train_10k.csv"),
        {"label": "label", "text": "text"},
        {"gt": "categorical", "group": "categorical"},  # class code 0-3; annotation code, 7 values
    ),
    "mnli_negation": (
        ("mnli_negation", "mnli_dev_matched_bert100.tsv"),
        {"label": "gold_label", "text": "hypothesis"},
        {
            "index": "identifier",  # a row index: all distinct, no gaps
            "premise": "text",  # prose, each premise about 3 times (3 hypotheses)
            "number of correct responses (out of 100)": "numeric",
        },
    ),
    "imdb_counterfactual": (
        ("imdb_counterfactual", "train_paired.tsv"),
        {"label": "Sentiment", "text": "Text"},
        {"batch_id": "identifier"},  # one id per review pair
    ),
    "gsm8k": (
        ("gsm8k_contamination", "train.jsonl"),
        {"text": "question", "label": "none"},
        {"answer": "text"},
    ),
}


@pytest.mark.parametrize("name", sorted(REAL_SETS))
def test_type_rules_on_real_data(name, tmp_path):
    parts, roles, want = REAL_SETS[name]
    path = shared_data(*parts)
    with Store(tmp_path / "s.duckdb") as st:
        ingest(st, path, split="train", **roles)
        d = st.data_definition()
    assert {c: d.column(c).type for c in want} == want
    assert {d.column(c).role for c in want} == {"metadata"}


def test_type_rules_on_sklearn_tables(db_path):
    """scikit-learn's bundled tables (no download): measurements are numeric, a 0/1 code is
    categorical."""
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

    for i, load in enumerate((load_wine, load_breast_cancer, load_diabetes)):
        frame = pl.from_pandas(load(as_frame=True).frame)
        with Store(db_path.with_name(f"t{i}.duckdb")) as st:
            ingest_frame(st, frame, split="train", label="target")
            types = {c.name: c.type for c in st.data_definition().columns if c.role == "metadata"}
        want = dict.fromkeys(frame.drop("target").columns, "numeric")
        if load is load_diabetes:
            want["sex"] = "categorical"  # two values (scaled 0/1)
        assert types == want


def test_type_rules_on_the_cases_they_were_fixed_for(db_path):
    """A long-string id, a short title column, a numeric code, a row index, a repeated-prose
    column (120 texts, each 2-3 times) and a real category (every rule applies from MIN_ROWS
    values on)."""
    import uuid

    rng = np.random.default_rng(3)
    n = 300
    prose = [" ".join(rng.choice(WORDS, 6)) for _ in range(120)]
    frame = pl.DataFrame(
        {
            "label": rng.choice(["a", "b"], n),
            "uuid": [str(uuid.UUID(int=int(i), version=4)) for i in rng.integers(0, 2**62, n)],
            "title": [" ".join(rng.choice(WORDS, 2)) for _ in range(n)],  # about 60% distinct
            "code": rng.integers(100, 108, n),
            "index": np.arange(n) + 1,
            "premise": [prose[i % 120] for i in range(n)],  # 40% distinct
            "city": rng.choice(["Paris", "Lyon", "Nice"], n),
            "price": rng.normal(size=n),
        }
    )
    with Store(db_path) as st:
        ingest_frame(st, frame, split="train", text="none")
        types = {c.name: c.type for c in st.data_definition().columns if c.role == "metadata"}
    assert types == {
        "uuid": "identifier",
        "title": "text",
        "code": "categorical",
        "index": "identifier",
        "premise": "text",
        "city": "categorical",
        "price": "numeric",
    }
