"""Ingest: every format, role inference, splits, unlabelled splits, row_id stability, images,
user vectors, schema evolution and all-or-nothing writes."""

from __future__ import annotations

import json
import os

import duckdb
import numpy as np
import polars as pl
import pytest

from datacure.generators.synthetic import coloured_digits, write_image_table
from datacure.store import Store
from datacure.store import schema as S
from datacure.store.errors import InputError
from datacure.store.ingest import ingest, ingest_frame

WORDS = "the cat dog sat ran on a mat park bird sang tree stock fell rose market news".split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=8)) + f" #{i}" for i in range(n)]


def frame(n: int = 30, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "text": texts(n, seed),
            "label": rng.choice(["pos", "neg"], n),
            "score": rng.random(n),
        }
    )


def snapshot(db) -> dict:
    """Every table's full contents, order-independent: to check a store is unchanged."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = sorted(
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        )
        snap = {}
        for t in names:
            cols = con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = ? "
                "ORDER BY ordinal_position",
                [t],
            ).fetchall()
            rows = con.execute(f'SELECT * FROM "{t}"').fetchall()
            snap[t] = (cols, sorted(map(repr, rows)))
        return snap
    finally:
        con.close()


def samples(st: Store) -> pl.DataFrame:
    return st.polars("SELECT * FROM samples ORDER BY row_id")


# --- formats -------------------------------------------------------------------------------------
def _write(df: pl.DataFrame, path, fmt: str):
    if fmt == "csv":
        df.write_csv(path)
    elif fmt == "tsv":
        df.write_csv(path, separator="\t")
    elif fmt == "parquet":
        df.write_parquet(path)
    elif fmt == "jsonl":
        df.write_ndjson(path)


@pytest.mark.parametrize(
    "fmt,suffix", [("csv", "csv"), ("tsv", "tsv"), ("parquet", "parquet"), ("jsonl", "jsonl")]
)
def test_table_formats_infer_roles_and_keep_columns(tmp_path, db_path, fmt, suffix):
    df = frame(30)
    path = tmp_path / f"data.{suffix}"
    _write(df, path, fmt)
    with Store(db_path) as st:
        rep = ingest(st, path)
        got = samples(st)
        assert rep.split_counts == {"train": 30}
        assert (rep.label_column, rep.text_column, rep.image_column) == ("label", "text", None)
        # every source column under its own name, plus datacure's own
        assert got.columns == ["row_id", "split", "label", "id", "text", "score", "_content_hash"]
        assert got["row_id"].to_list() == list(range(30))
        assert got["text"].to_list() == df["text"].to_list()
        assert got["label"].to_list() == df["label"].to_list()
        assert np.allclose(got["score"].to_numpy(), df["score"].to_numpy())
        types = dict(st.columns("samples"))
        assert types["id"] == "BIGINT" and types["score"] == "DOUBLE" and types["text"] == "VARCHAR"
        assert st.text_column() == "text" and st.label_column() == "label"
        assert st.source_columns() == ["label", "id", "text", "score"]
        src = st.fetchone("SELECT split, format, label_column, text_column, num_rows FROM sources")
        assert src == ("train", fmt, "label", "text", 30)


def test_format_flag_overrides_the_name(tmp_path, db_path):
    path = tmp_path / "data.txt"
    frame(10).write_csv(path, separator="\t")
    with Store(db_path) as st:
        with pytest.raises(InputError, match="--format"):
            ingest(st, path)
        rep = ingest(st, path, fmt="tsv")
        assert rep.split_counts == {"train": 10}
        assert st.scalar("SELECT count(DISTINCT text) FROM samples") == 10


def test_parquet_keeps_source_types(tmp_path, db_path):
    df = pl.DataFrame(
        {
            "text": texts(6),
            "label": [0, 1, 0, 1, 0, 1],
            "small": pl.Series([1, 2, 3, 4, 5, 6], dtype=pl.Int8),
            "f32": pl.Series([0.5] * 6, dtype=pl.Float32),
            "flag": [True, False] * 3,
            "tags": [["a"], ["b", "c"], [], ["d"], ["e"], ["f"]],
        }
    )
    df.write_parquet(tmp_path / "d.parquet")
    with Store(db_path) as st:
        ingest(st, tmp_path / "d.parquet")
        types = dict(st.columns("samples"))
        assert types["small"] == "TINYINT" and types["f32"] == "FLOAT"
        assert types["flag"] == "BOOLEAN" and types["tags"] == "VARCHAR[]"
        assert types["label"] == "BIGINT"
        assert samples(st)["tags"].to_list()[1] == ["b", "c"]


def test_parquet_folder(tmp_path, db_path):
    (tmp_path / "parts").mkdir()
    frame(10, 0).write_parquet(tmp_path / "parts" / "a.parquet")
    frame(7, 1).write_parquet(tmp_path / "parts" / "b.parquet")
    with Store(db_path) as st:
        rep = ingest(st, tmp_path / "parts", split="train")
        assert rep.split_counts == {"train": 17} and rep.fmt == "parquet"


def test_hf_dataset_and_datasetdict(tmp_path, db_path):
    import datasets

    feats = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "tag": datasets.ClassLabel(names=["neg", "pos"]),
            "n": datasets.Value("int32"),
        }
    )

    def make(n, seed):
        rng = np.random.default_rng(seed)
        return datasets.Dataset.from_dict(
            {
                "sentence": texts(n, seed),
                "tag": rng.integers(0, 2, n).tolist(),
                "n": list(range(n)),
            },
            features=feats,
        )

    make(12, 0).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": make(20, 1), "test": make(8, 2)}).save_to_disk(
        str(tmp_path / "dd")
    )
    with Store(db_path) as st:
        # a plain Dataset: one split; the ClassLabel column is the label, its names recorded
        rep = ingest(st, tmp_path / "single", split="extra")
        assert rep.fmt == "hf" and rep.split_counts == {"extra": 12}
        assert (rep.label_column, rep.text_column) == ("tag", "sentence")
        opts = json.loads(st.scalar("SELECT options FROM sources WHERE split = 'extra'"))
        assert opts["class_names"] == {"tag": ["neg", "pos"]}
        assert dict(st.columns("samples"))["n"] == "INTEGER"
        # a DatasetDict: its splits become splits
        rep = ingest(st, tmp_path / "dd")
        assert rep.split_counts == {"test": 8, "train": 20}
        got = st.polars(
            "SELECT split, label, tag, sentence FROM samples WHERE split = 'test' ORDER BY row_id"
        )
        assert got["sentence"].to_list() == texts(8, 2)
        assert got["label"].to_list() == got["tag"].to_list()
        assert "__dc_split" not in dict(st.columns("samples"))


def test_hf_datasetdict_one_split(tmp_path, db_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": texts(5), "label": [0, 1, 0, 1, 0]}),
            "validation": datasets.Dataset.from_dict({"text": texts(3, 9), "label": [1, 0, 1]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    with Store(db_path) as st:
        assert ingest(st, tmp_path / "dd", split="validation").split_counts == {"validation": 3}
        with pytest.raises(InputError, match="no split 'dev'"):
            ingest(st, tmp_path / "dd", split="dev")


# --- images --------------------------------------------------------------------------------------
def _image_folder(root, layout: str, n: int = 12):
    from PIL import Image

    imgs, df = coloured_digits(n=n, seed=1)
    for i, (arr, lab) in enumerate(zip(imgs, df["label"].to_list())):
        sub = root / ("train" if i % 3 else "test") if layout == "split" else root
        (sub / f"digit{lab}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(sub / f"digit{lab}" / f"{i:03d}.png")
    return df


def test_imagefolder_class_layout(tmp_path, db_path):
    df = _image_folder(tmp_path / "imgs", "class")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")  # ignored
    with Store(db_path) as st:
        rep = ingest(st, tmp_path / "imgs")
        assert rep.fmt == "imagefolder" and rep.split_counts == {"train": 12}
        got = samples(st)
        assert st.image_column() == "image" and st.text_column() is None
        assert sorted(got["label"].to_list()) == sorted(f"digit{v}" for v in df["label"].to_list())
        paths = got["image_path"].to_list()
        assert all(os.path.isabs(p) and os.path.isfile(p) for p in paths)
        assert all(p.endswith(r) for p, r in zip(paths, got["image"].to_list()))
        assert S.IMAGE_PATH in st.data_definition().added_columns
        assert st.source_columns() == ["label", "image"]


def test_imagefolder_split_layout(tmp_path, db_path):
    _image_folder(tmp_path / "imgs", "split")
    with Store(db_path) as st:
        rep = ingest(st, tmp_path / "imgs")
        assert rep.split_counts == {"test": 4, "train": 8}
        got = samples(st)
        assert all(r.startswith(s + "/") for r, s in zip(got["image"], got["split"]))
        assert set(got["label"]) <= {"digit0", "digit1"}


def test_image_table_with_relative_paths(tmp_path, db_path):
    imgs, df = coloured_digits(n=10, seed=2)
    csv = write_image_table(imgs, df, tmp_path / "ds")
    with Store(db_path) as st:
        rep = ingest(st, csv)
        assert rep.image_column == "image" and rep.label_column == "label"
        got = samples(st)
        expect = [str((tmp_path / "ds" / r).resolve()) for r in got["image"]]
        assert got["image_path"].to_list() == expect
        assert got["color"].to_list() == df["color"].to_list()


def test_image_paths_outside_the_folder(tmp_path, db_path):
    imgs, df = coloured_digits(n=4, seed=3)
    csv = write_image_table(imgs, df, tmp_path / "ds")
    outside = tmp_path / "elsewhere.png"
    (tmp_path / "ds" / "images" / "000000.png").rename(outside)
    (tmp_path / "ds" / "images" / "000000.png").symlink_to(outside)  # a symlink out
    t = pl.read_csv(csv)
    t = t.with_columns(
        pl.Series(
            "image", ["images/000000.png", "../elsewhere.png", str(outside), "images/000003.png"]
        )
    )
    t.write_csv(csv)
    with Store(db_path) as st:
        with pytest.raises(InputError, match="3 outside") as err:
            ingest(st, csv, split="train")
        assert "--allow-outside-paths" in err.value.fix
        assert not st.has_samples()
        rep = ingest(st, csv, split="train", allow_outside=True)
        assert rep.split_counts == {"train": 4}
        assert samples(st)["image_path"].to_list()[:3] == [str(outside)] * 3


# --- splits, labels ------------------------------------------------------------------------------
def test_splits_and_unlabelled_split(tmp_path, db_path):
    frame(20, 0).write_csv(tmp_path / "train.csv")
    frame(6, 1).drop("label").write_csv(tmp_path / "test.csv")
    frame(5, 2).write_csv(tmp_path / "pool.csv")
    with Store(db_path) as st:
        assert ingest(st, tmp_path / "train.csv").split_counts == {"train": 20}  # from the name
        rep = ingest(st, tmp_path / "test.csv")
        assert rep.split_counts == {"test": 6} and rep.unlabelled == ["test"]
        assert "unlabelled" in rep.summary()
        # --label none: unlabelled even though a label column exists; it is kept as label_source
        rep = ingest(st, tmp_path / "pool.csv", split="pool", label="none")
        assert rep.unlabelled == ["pool"]
        counts = dict(st.fetchall("SELECT split, count(label) FROM samples GROUP BY 1"))
        assert counts == {"train": 20, "test": 0, "pool": 0}
        assert st.scalar("SELECT count(label_source) FROM samples WHERE split = 'pool'") == 5
        assert st.scalar("SELECT label_column FROM sources WHERE split = 'test'") is None
        assert st.splits() == ["pool", "test", "train"]
        # row ids are unique across splits
        assert st.scalar("SELECT count(DISTINCT row_id) FROM samples") == 31


def test_split_column_with_an_unlabelled_split(tmp_path, db_path):
    df = frame(12).with_columns(part=pl.Series(["tr"] * 8 + ["te"] * 4))
    df = df.with_columns(
        label=pl.when(pl.col("part") == "te").then(None).otherwise(pl.col("label"))
    )
    df.write_parquet(tmp_path / "all.parquet")
    with Store(db_path) as st:
        rep = ingest(st, tmp_path / "all.parquet", split_column="part")
        assert rep.split_counts == {"te": 4, "tr": 8} and rep.unlabelled == ["te"]
        assert st.data_definition().split_sources == ["part"]
        assert st.scalar("SELECT count(*) FROM samples WHERE split = 'tr' AND label IS NULL") == 0


def test_source_column_named_split_gives_the_splits(tmp_path, db_path):
    df = frame(10).with_columns(split=pl.Series(["train"] * 7 + ["val"] * 3))
    df.write_csv(tmp_path / "d.csv")
    with Store(db_path) as st:
        assert ingest(st, tmp_path / "d.csv").split_counts == {"train": 7, "val": 3}
        assert "split_source" not in dict(st.columns("samples"))


def test_reserved_names_are_kept_as_source(tmp_path, db_path):
    df = frame(6).with_columns(
        row_id=pl.Series([100, 101, 102, 103, 104, 105]),
        split=pl.lit("whatever"),
        category=pl.Series(["a", "b"] * 3),
    )
    df.write_parquet(tmp_path / "d.parquet")
    with Store(db_path) as st:
        rep = ingest(st, tmp_path / "d.parquet", split="train", label="category")
        assert rep.renamed == {
            "label": "label_source",
            "row_id": "row_id_source",
            "split": "split_source",
        }
        got = samples(st)
        assert got["row_id"].to_list() == list(range(6))
        assert got["row_id_source"].to_list() == list(range(100, 106))
        assert got["split"].unique().to_list() == ["train"]
        assert got["label"].to_list() == got["category"].to_list()
        assert got["label_source"].to_list() == df["label"].to_list()
        assert st.data_definition().label_sources == ["category"]
        assert S.LABEL in st.data_definition().added_columns
        assert "label" not in st.source_columns() and "category" in st.source_columns()


def test_inference_is_refused_when_ambiguous(tmp_path, db_path):
    df = frame(10).with_columns(title=pl.Series(texts(10, 5)), target=pl.lit("x"))
    df.write_csv(tmp_path / "d.csv")
    with Store(db_path) as st:
        with pytest.raises(InputError, match="could be the label: label, target"):
            ingest(st, tmp_path / "d.csv")
        with pytest.raises(InputError, match="could be the text: text .*title") as err:
            ingest(st, tmp_path / "d.csv", label="label")
        assert "--text" in err.value.fix
        rep = ingest(st, tmp_path / "d.csv", label="label", text="title")
        assert rep.text_column == "title"


def test_later_ingests_must_match_the_first(tmp_path, db_path):
    frame(8).write_csv(tmp_path / "train.csv")
    frame(5, 1).rename({"text": "sentence"}).write_csv(tmp_path / "test.csv")
    with Store(db_path) as st:
        ingest(st, tmp_path / "train.csv")
        with pytest.raises(InputError, match="no column 'text', the store's text column"):
            ingest(st, tmp_path / "test.csv")
        with pytest.raises(InputError, match="text column is 'text', not 'sentence'"):
            ingest(st, tmp_path / "test.csv", text="sentence")
        with pytest.raises(InputError, match="holds text data"):
            ingest(st, tmp_path / "test.csv", image="sentence")


def test_new_columns_and_safe_casts(tmp_path, db_path):
    frame(8).write_csv(tmp_path / "train.csv")
    # a new column, and `id` read as text whose values are whole numbers: cast safely
    frame(4, 1).with_columns(pl.col("id").cast(pl.Utf8), extra=pl.lit(1.5)).write_parquet(
        tmp_path / "test.parquet"
    )
    frame(3, 2).with_columns(pl.lit("x7").alias("id")).write_parquet(tmp_path / "bad.parquet")
    with Store(db_path) as st:
        ingest(st, tmp_path / "train.csv")
        rep = ingest(st, tmp_path / "test.parquet", split="test")
        assert rep.added_columns == ["extra"]
        types = dict(st.columns("samples"))
        assert types["id"] == "BIGINT" and types["extra"] == "DOUBLE"
        assert st.scalar("SELECT count(extra) FROM samples WHERE split = 'train'") == 0
        assert st.scalar("SELECT sum(id) FROM samples WHERE split = 'test'") == 6
        # text codes where the store holds numbers: the column widens to VARCHAR, losing nothing
        rep = ingest(st, tmp_path / "bad.parquet", split="more")
        assert "'id' widened from BIGINT to VARCHAR" in rep.summary()
        assert dict(st.columns("samples"))["id"] == "VARCHAR"
        got = st.polars("SELECT split, id FROM samples ORDER BY row_id")
        assert (
            got["id"].to_list()
            == [str(i) for i in range(8)] + [str(i) for i in range(4)] + ["x7"] * 3
        )


def test_unlabelled_first_then_labelled_adopts_the_label_type(tmp_path, db_path):
    frame(5).drop("label").write_csv(tmp_path / "pool.csv")
    frame(6, 1).with_columns(label=pl.Series([0, 1, 2, 0, 1, 2])).write_csv(tmp_path / "train.csv")
    with Store(db_path) as st:
        ingest(st, tmp_path / "pool.csv", split="pool")
        ingest(st, tmp_path / "train.csv")
        assert dict(st.columns("samples"))["label"] == "BIGINT"
        assert st.scalar("SELECT sum(label) FROM samples") == 6
        # the label column is never widened: text labels in a store of numbers are refused
        frame(3, 2).with_columns(label=pl.lit("cat")).write_csv(tmp_path / "cats.csv")
        with pytest.raises(InputError, match="'label' is BIGINT in the store but VARCHAR here"):
            ingest(st, tmp_path / "cats.csv", split="cats")


# --- row_id stability -----------------------------------------------------------------------------
def test_reingest_keeps_row_ids_of_unchanged_rows(tmp_path, db_path):
    df = frame(10)
    df = pl.concat([df, df.slice(2, 1)])  # row 10 duplicates row 2
    df.write_csv(tmp_path / "train.csv")
    frame(4, 7).write_csv(tmp_path / "test.csv")
    with Store(db_path) as st:
        ingest(st, tmp_path / "train.csv")
        ingest(st, tmp_path / "test.csv")
        before = samples(st)
        ids = dict(zip(before["text"].to_list(), before["row_id"].to_list()))
        # derived data: an embedding and a cached kNN graph over the train rows
        rid = before.filter(pl.col("split") == "train")["row_id"].to_numpy()
        st.register_embedding("t", 3, "m", "text", "test", False)
        st.append_embeddings(
            "t", before["row_id"].to_numpy(), np.ones((len(before), 3), np.float32)
        )
        from datacure.store.knn import cached_knn

        cached_knn(
            st, "t", rid, np.random.default_rng(0).normal(size=(len(rid), 3)).astype(np.float32), 3
        )
        assert st.scalar("SELECT count(*) FROM knn_graphs") == 1
        test_ids = before.filter(pl.col("split") == "test")["row_id"].to_list()

        # change row 4's text, drop row 7, add a new row, shuffle the order, keep the duplicate
        new = df.with_columns(
            text=pl.when(pl.col("id") == 4)
            .then(pl.lit("an edited sentence here"))
            .otherwise(pl.col("text"))
        ).filter(pl.col("id") != 7)
        new = pl.concat(
            [new, frame(12, 3).slice(11, 1).with_columns(id=pl.lit(99, dtype=pl.Int64))]
        )
        new = new.sample(fraction=1.0, shuffle=True, seed=1)
        new.write_csv(tmp_path / "train.csv")
        with pytest.raises(InputError, match="already in the store"):
            ingest(st, tmp_path / "train.csv")
        rep = ingest(st, tmp_path / "train.csv", replace=True)
        assert (rep.kept, rep.new, rep.retired) == (9, 2, 2)
        after = samples(st).filter(pl.col("split") == "train")
        dup = df["text"][2]
        for text, rid_ in zip(after["text"], after["row_id"]):
            if text in ids and text != dup:
                assert rid_ == ids[text]
        assert sorted(after.filter(pl.col("text") == dup)["row_id"].to_list()) == sorted(
            before.filter(pl.col("text") == dup)["row_id"].to_list()
        )
        fresh = after.filter(~pl.col("text").is_in(list(ids)))["row_id"].to_list()
        assert len(fresh) == 2 and min(fresh) >= 15  # from the counter, never a reused id
        retired = {ids[df["text"][4]], ids[df["text"][7]]}
        assert not retired & set(after["row_id"].to_list())
        # derived data of retired rows is gone, the rest is kept; the test split is untouched
        emb = set(st.con.execute("SELECT row_id FROM embeddings_t").fetchnumpy()["row_id"].tolist())
        assert not emb & retired and len(emb) == 15 - 2
        assert st.scalar("SELECT count(*) FROM knn_graphs") == 0
        assert samples(st).filter(pl.col("split") == "test")["row_id"].to_list() == test_ids
        # re-adding a retired row gives it a new id: ids are never reused
        df.write_csv(tmp_path / "train.csv")
        ingest(st, tmp_path / "train.csv", replace=True)
        assert not retired & set(samples(st)["row_id"].to_list())
        assert st.meta_get("next_row_id") == 15 + 2 + 2


# --- user vectors ---------------------------------------------------------------------------------
def test_vector_column_becomes_an_embedding(tmp_path, db_path):
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(20, 8)).astype(np.float32)
    df = frame(20).with_columns(emb=pl.Series(vec.tolist(), dtype=pl.Array(pl.Float32, 8)))
    df.write_parquet(tmp_path / "d.parquet")
    with Store(db_path) as st:
        rep = ingest(st, tmp_path / "d.parquet", vector="emb")
        assert rep.vector_key == "user_emb"
        assert "emb" not in dict(st.columns("samples"))
        assert st.data_definition().vector_columns == ["emb"]
        rid, got = st.load_embeddings("user_emb")
        assert rid.tolist() == list(range(20)) and got.dtype == np.float32
        assert np.allclose(got, vec)
        assert dict(st.columns("embeddings_user_emb"))["vector"] == "FLOAT[8]"
        # re-ingest: unchanged rows keep id and vector; no duplicates
        ingest(st, tmp_path / "d.parquet", vector="emb", replace=True)
        rid2, got2 = st.load_embeddings("user_emb")
        assert rid2.tolist() == rid.tolist() and np.allclose(got2, vec)


def test_vectors_written_as_text_in_csv(tmp_path, db_path):
    df = frame(4).with_columns(
        v=pl.Series(["[1, 2, 3]", "[4, 5, 6]", "[0.5, 0, 1]", "[1e-3, 2, 3]"])
    )
    df.write_csv(tmp_path / "d.csv")
    with Store(db_path) as st:
        ingest(st, tmp_path / "d.csv", vector="v")
        _, got = st.load_embeddings("user_v")
        assert got.shape == (4, 3) and got[2, 0] == 0.5


# --- all or nothing -------------------------------------------------------------------------------
def test_a_failure_mid_write_leaves_the_store_as_it_was(tmp_path, db_path, monkeypatch):
    rng = np.random.default_rng(0)
    frame(10).write_csv(tmp_path / "train.csv")
    df = frame(6, 1).with_columns(extra=pl.lit(1), emb=pl.Series(rng.normal(size=(6, 4)).tolist()))
    df.write_parquet(tmp_path / "test.parquet")
    with Store(db_path) as st:
        ingest(st, tmp_path / "train.csv")
    before = snapshot(db_path)

    def boom(*a, **k):
        raise RuntimeError("planted failure after samples were written")

    monkeypatch.setattr(Store, "register_embedding", boom)
    with Store(db_path) as st:
        with pytest.raises(RuntimeError, match="planted"):
            ingest(st, tmp_path / "test.parquet", split="test", vector="emb")
        with pytest.raises(RuntimeError, match="planted"):
            ingest(st, tmp_path / "test.parquet", split="train", replace=True, vector="emb")
    assert snapshot(db_path) == before


def test_ingest_frame_is_the_same_core(db_path):
    df = pl.DataFrame({"label": [0, 1, 1], "f": [1.0, 2.0, 3.0], "split": ["a", "b", "c"]})
    with Store(db_path) as st:
        rep = ingest_frame(st, df, label="label")
        assert rep.split_counts == {"train": 3}
        got = samples(st)
        assert got["split_source"].to_list() == ["a", "b", "c"] and got["label"].to_list() == [
            0,
            1,
            1,
        ]
        ingest_frame(st, df.drop("split"), split="more")
        assert st.split_counts() == {"more": 3, "train": 3}


# --- real data ------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_noisy_ag_news_and_imdb_tsv(db_path):
    from helpers import shared_data

    ag = shared_data("noisy_ag_news")
    with Store(db_path) as st:
        assert ingest(st, ag / "train_10k.csv").split_counts == {"train": 10_000}
        assert ingest(st, ag / "test.csv").split_counts == {"test": 7_600}
        assert (st.text_column(), st.label_column()) == ("text", "label")
        noisy = st.scalar("SELECT avg((label != gt)::INT) FROM samples WHERE split = 'train'")
        assert abs(noisy - 0.1975) < 0.002  # the data README's figure
        assert st.scalar("SELECT count(DISTINCT label) FROM samples") == 4
        assert st.scalar("SELECT count(DISTINCT row_id) FROM samples") == 17_600
    imdb = shared_data("imdb_counterfactual", "dev_paired.tsv")
    with Store(db_path.with_name("imdb.duckdb")) as st:
        rep = ingest(st, imdb, label="Sentiment")
        assert rep.split_counts == {"dev": 490} and rep.text_column == "Text"
        assert st.scalar("SELECT count(*) FROM samples WHERE label = 'Positive'") == 245


def test_names_are_case_insensitive_and_quoted(tmp_path, db_path):
    df = pl.DataFrame(
        {
            "Text": texts(4),
            "Label": ["a", "b", "a", "b"],
            "Split": ["x", "y", "x", "y"],
            'my "odd" col': [1, 2, 3, 4],
        }
    )
    df.write_parquet(tmp_path / "d.parquet")
    with Store(db_path) as st:
        rep = ingest(st, tmp_path / "d.parquet", split="train")
        assert rep.renamed == {"Label": "label", "Split": "Split_source"}
        got = samples(st)
        assert got["label"].to_list() == ["a", "b", "a", "b"]
        assert got["Split_source"].to_list() == ["x", "y", "x", "y"]
        assert got['my "odd" col'].to_list() == [1, 2, 3, 4]
        assert st.text_column() == "Text"
        # a later source spelling a column differently is the same column
        df.rename({'my "odd" col': 'MY "ODD" COL'}).write_parquet(tmp_path / "e.parquet")
        rep = ingest(st, tmp_path / "e.parquet", split="more")
        assert rep.added_columns == [] and st.scalar("SELECT count(label) FROM samples") == 8
    odd = pl.DataFrame({"a": [1], "A": [2], "text": ["x y z w"]})
    odd.write_parquet(tmp_path / "f.parquet")
    with Store(tmp_path / "other.duckdb") as st:
        with pytest.raises(InputError, match="differ only in case"):
            ingest_frame(st, odd)
        ingest(st, tmp_path / "f.parquet")  # DuckDB's reader renames the second one itself
        assert st.fetchone('SELECT a, "A_1" FROM samples') == (1, 2)


# --- roles asked, not guessed ------------------------------------------------------------------
def test_file_names_without_files_are_not_an_image_column(tmp_path, db_path):
    """A column of bare file names (`000001.jpg`) whose files are not beside the table is
    metadata, not images: the ingest succeeds, says why, and `--image COL` would insist."""
    n = 20
    pl.DataFrame(
        {
            "file": [f"{i:06d}.jpg" for i in range(n)],
            "label": ["a", "b"] * (n // 2),
            "score": np.arange(n),
        }
    ).write_csv(tmp_path / "attrs.csv")
    st = Store(db_path)
    rep = ingest(st, tmp_path / "attrs.csv")
    assert rep.image_column is None and st.image_column() is None
    assert any("not files under" in note and "--image file" in note for note in rep.notes)
    assert st.scalar("SELECT count(*) FROM samples") == n


def test_image_none_and_text_none_opt_out(tmp_path, db_path):
    imgs, fr = coloured_digits(n=12, seed=2)
    csv = write_image_table(imgs, fr.drop("aligned"), tmp_path / "img")
    st = Store(db_path)
    rep = ingest(st, csv, image="none")  # the files exist, but the user said: no images
    assert rep.image_column is None and "image" in st.source_columns()
    st.close()
    frame_ = pl.DataFrame({"note": ["a long free text note here"] * 6, "label": [0, 1] * 3})
    frame_.write_csv(tmp_path / "t.csv")
    st2 = Store(tmp_path / "t.duckdb")
    assert ingest(st2, tmp_path / "t.csv").text_column == "note"  # inferred by default
    st3 = Store(tmp_path / "t3.duckdb")
    assert ingest(st3, tmp_path / "t.csv", text="none").text_column is None


def test_embed_hint_names_vector_for_tables_without_content(db_path):
    from datacure.store.embed import embed

    st = Store(db_path)
    ingest_frame(st, pl.DataFrame({"a": [1.0, 2.0, 3.0], "label": [0, 1, 0]}))
    with pytest.raises(InputError) as err:
        embed(st)
    assert "--vector COL" in err.value.fix
