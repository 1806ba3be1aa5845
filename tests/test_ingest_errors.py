"""Bad input to `datacure ingest`: each case exits 2 with a message naming the problem and the
fix, and leaves the store exactly as it was (every table compared before and after).

Most cases run the CLI in-process through `cli.main` (the console script's entry point: it
turns the error into the message and exit code); one runs the installed `datacure` script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_ingest import frame, snapshot

import datacure.store.ingest_checks as ingest_mod
from datacure.generators.synthetic import coloured_digits, write_image_table

DATACURE = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "datacure"


@pytest.fixture
def seeded(tmp_path, db_path):
    """A store that already holds a train split, and its snapshot."""
    frame(10).write_csv(tmp_path / "train.csv")
    code, err = _cli(["ingest", str(tmp_path / "train.csv"), "--db", str(db_path)])
    assert code == 0, err
    return db_path, snapshot(db_path)


def _cli(args: list[str]) -> tuple[int, str]:
    """Run `datacure ARGS` in-process through cli.main; (exit code, stderr)."""
    from datacure import cli

    old = sys.argv
    sys.argv = ["datacure", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    return code, ""


@pytest.fixture
def run(capsys, seeded):
    db, before = seeded

    def go(*args: str, expect: int = 2) -> str:
        capsys.readouterr()
        code, _ = _cli(["ingest", *map(str, args), "--db", str(db)])
        err = capsys.readouterr().err
        assert code == expect, err
        if expect == 2:
            assert "error:" in err and "fix:" in err
            assert snapshot(db) == before, "a failed ingest changed the store"
        return " ".join(err.split())

    return go


def test_missing_file(run, tmp_path):
    err = run(tmp_path / "trian.csv")
    assert "trian.csv does not exist" in err and "did you mean train.csv" in err


def test_unknown_column(run, tmp_path):
    frame(5, 1).write_csv(tmp_path / "test.csv")
    err = run(tmp_path / "test.csv", "--label", "lable")
    assert "has no column 'lable'" in err and "did you mean label" in err
    err = run(tmp_path / "test.csv", "--split-column", "part")
    assert "has no column 'part'" in err and "the columns are: id, text, label, score" in err


def test_empty_files(run, tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    assert "empty (0 bytes)" in run(tmp_path / "empty.csv", "--split", "x")
    (tmp_path / "header.csv").write_text("id,text,label\n")
    err = run(tmp_path / "header.csv", "--split", "x")
    assert "has no rows (columns: id, text, label)" in err
    frame(0).write_parquet(tmp_path / "none.parquet")
    assert "has no rows" in run(tmp_path / "none.parquet", "--split", "x")


def test_label_with_nulls(run, tmp_path):
    df = frame(10, 2).with_columns(
        label=pl.when(pl.col("id").is_in([3, 7])).then(None).otherwise(pl.col("label"))
    )
    df.write_csv(tmp_path / "test.csv")
    err = run(tmp_path / "test.csv")
    assert "label column 'label' is empty in 2 of 10 rows of split test (data rows 4, 8)" in err
    assert "drop those rows" in err and "--label none" in err
    # the suggested fix works
    run(tmp_path / "test.csv", "--label", "none", expect=0)


def test_existing_split_needs_replace(run, tmp_path):
    frame(4, 3).write_csv(tmp_path / "more.csv")
    err = run(tmp_path / "more.csv", "--split", "train")
    assert "split(s) train already in the store" in err and "--replace" in err


def test_label_type_conflict(run, tmp_path, db_path):
    # the seeded store's labels are text; numbers would cast safely, a list cannot
    frame(4, 3).with_columns(label=pl.Series([[1], [2], [1], [2]])).write_parquet(
        tmp_path / "t.parquet"
    )
    err = run(tmp_path / "t.parquet", "--split", "test")
    assert (
        "column 'label' is VARCHAR in the store but BIGINT[] here, and 4 values do not convert"
        in err
    )
    assert "same type in every source" in err


def test_non_utf8_text(run, tmp_path):
    body = "id,text,label\n1,the cat sat on it,pos\n2,caf\xe9 au lait in paris,neg\n"
    (tmp_path / "test.csv").write_bytes(body.encode("latin-1"))
    err = run(tmp_path / "test.csv")
    assert (
        "is not UTF-8 text" in err and "invalid byte(s) b'\\xe9' at byte offset 43 (line 3)" in err
    )
    assert "'é'" in err and "iconv" in err
    (tmp_path / "u16.jsonl").write_bytes(
        '{"text": "hello there you", "label": 1}\n'.encode("utf-16")
    )
    assert "UTF-16" in run(tmp_path / "u16.jsonl", "--split", "x")


def test_vector_column_of_mixed_lengths(run, tmp_path):
    rng = np.random.default_rng(0)
    vecs = [rng.normal(size=4).tolist() for _ in range(6)]
    vecs[2] = vecs[2][:3]
    frame(6, 4).with_columns(emb=pl.Series(vecs)).write_ndjson(tmp_path / "test.jsonl")
    err = run(tmp_path / "test.jsonl", "--vector", "emb")
    assert "mixed lengths: 3 (1 rows), 4 (5 rows); e.g. rows 3 are not 4-long" in err
    err = run(tmp_path / "test.jsonl", "--vector", "text")
    assert "not lists of numbers" in err


def _images(tmp_path, n=6):
    imgs, df = coloured_digits(n=n, seed=4)
    return write_image_table(imgs, df, tmp_path / "ds", name="test.csv")


@pytest.fixture
def image_store(tmp_path, db_path, capsys):
    """An image store (its first ingest sets the image column) and its snapshot."""
    imgs, df = coloured_digits(n=4, seed=5)
    csv = write_image_table(imgs, df, tmp_path / "first", name="train.csv")
    assert _cli(["ingest", str(csv), "--db", str(db_path)])[0] == 0
    return db_path, snapshot(db_path)


@pytest.fixture
def run_img(capsys, image_store):
    db, before = image_store

    def go(*args: str) -> str:
        capsys.readouterr()
        code, _ = _cli(["ingest", *map(str, args), "--db", str(db)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert snapshot(db) == before, "a failed ingest changed the store"
        return " ".join(err.split())

    return go


def test_corrupt_and_missing_images(run_img, tmp_path):
    csv = _images(tmp_path)
    root = tmp_path / "ds" / "images"
    (root / "000001.png").write_bytes(b"this is not a png at all")
    data = (root / "000002.png").read_bytes()
    (root / "000002.png").write_bytes(data[: len(data) // 2])  # truncated
    (root / "000004.png").unlink()
    err = run_img(csv)
    assert "3 of 6 images" in err
    assert "2 corrupt: images/000001.png (UnidentifiedImageError" in err
    assert "images/000002.png (OSError: image file is truncated)" in err
    assert "1 missing: images/000004.png" in err
    assert "re-export or drop the unreadable images" in err


@pytest.mark.parametrize("limit", [500, 800])  # Pillow's own error (>2x) and datacure's check
def test_decompression_bomb(run_img, tmp_path, monkeypatch, limit):
    monkeypatch.setattr(ingest_mod, "MAX_IMAGE_PIXELS", limit)  # the 32x32 images are 1024 px
    err = run_img(_images(tmp_path, 3))
    assert "3 too large" in err and "decompression bombs" in err
    assert "DATACURE_MAX_IMAGE_PIXELS" in err


def test_image_paths_escaping_the_folder(run_img, tmp_path):
    csv = _images(tmp_path, 3)
    df = pl.read_csv(csv).with_columns(
        pl.Series("image", ["../x.png", "/etc/passwd", "images/000002.png"])
    )
    df.write_csv(csv)
    err = run_img(csv)
    assert "2 outside: ../x.png, /etc/passwd" in err and "--allow-outside-paths" in err


def test_installed_script_exit_code_and_store_unchanged(seeded, tmp_path):
    """The real console script: exit 2, the message on stderr, nothing written."""
    db, before = seeded
    (tmp_path / "test.csv").write_bytes(
        "id,text,label\n1,na\xefve text here,pos\n".encode("cp1252")
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [str(DATACURE), "ingest", str(tmp_path / "test.csv"), "--db", str(db)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "not UTF-8" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(db) == before


def test_cli_image_none_keeps_file_names_as_metadata(tmp_path, db_path):
    """`--image none` on the command line: a table whose file-name column would be taken as
    images is ingested with the names as an ordinary column."""
    imgs, fr = coloured_digits(n=8, seed=1)
    csv = write_image_table(imgs, fr.drop("aligned"), tmp_path / "img")
    code, err = _cli(["ingest", str(csv), "--db", str(db_path), "--image", "none"])
    assert code == 0, err
    from datacure.store import Store

    st = Store(db_path, read_only=True)
    assert st.image_column() is None and "image" in st.source_columns()
