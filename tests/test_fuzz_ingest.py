"""Fuzzed sources through the real CLI: ingest, embed, audit, issues and export never end in a
traceback; each either works or exits 2 with a message and a fix, and a failure leaves every
table of the store exactly as it was.

Hypothesis draws CSV, JSONL and Parquet files with odd shapes: zero rows, one row, one class, a
label column that is all null or partly null, mixed types in a column (JSONL), empty strings and
nulls in every column, very long text, unicode and control characters (NUL, escape, newlines,
Rich markup), duplicated and odd column names (reserved names, empty, quotes), and vectors with
NaN, nulls or mixed lengths. Half the cases ingest into a store that already holds a split, so a
failure has something to leave alone.

`datacure embed` runs with the cheap token-hashing embedder (`--model hash:32`); some cases also
carry precomputed `--vector` columns. The default run draws FUZZ_EXAMPLES cases (25, fixed by
`derandomize`; the count is printed); `-m slow` draws 300 new ones each run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hardening_util import Result, run_cli, snapshot
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("DATACURE_FUZZ_EXAMPLES", "25"))
COUNTS = {"cases": 0, "ingest_ok": 0, "ingest_refused": 0, "steps": 0, "embed_runs": 0}

LONG = "long " * 20_000  # 100k characters
ODD_STRINGS = [
    "",
    " ",
    LONG,
    "\x00nul inside",
    "esc \x1b[31m red",
    "line\nbreak, \"quoted\", 'single'",
    "\r\n\t",
    "[/b] not [red]markup",
    "ünïcödé 文字 🙂 \u200b\u202e",
    "a,b;c|d",
    "NULL",
    "NaN",
    "1e999",
]
NAMES = [
    "text",
    "label",
    "extra",
    "vec",
    "split",
    "row_id",
    "image_path",
    "_content_hash",
    "Label",
    "class",
    "",
    " ",
    'a"b',
    "ünï",
    "[/x]",
    "__dc_pos",
    "x.y",
]


# --- strategies -----------------------------------------------------------------------------------
def cell_text():
    return st.one_of(
        st.none(),
        st.sampled_from(ODD_STRINGS),
        st.text(st.characters(codec="utf-8"), max_size=20),
        st.text("ab ", min_size=10, max_size=40),
    )


def mixed_value():
    return st.one_of(
        st.none(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.sampled_from(ODD_STRINGS),
        st.lists(st.integers(0, 3), max_size=3),
        st.dictionaries(st.sampled_from(["k", "v"]), st.integers(0, 3), max_size=2),
    )


@st.composite
def sources(draw):
    fmt = draw(st.sampled_from(["csv", "jsonl", "parquet"]))
    n = draw(st.sampled_from([0, 1, 2, 3, 7, 12]))
    label_mode = draw(
        st.sampled_from(
            ["two", "two", "one", "all_null", "some_null", "numeric", "mixed", "absent"]
        )
    )
    cols: dict[str, list] = {}
    text_name = draw(st.sampled_from(["text", "text", "text", "body", "[/x]"]))
    cols[text_name] = draw(st.lists(cell_text(), min_size=n, max_size=n))
    if label_mode != "absent":
        lab = {
            "two": st.sampled_from(["pos", "neg"]),
            "one": st.just("only"),
            "all_null": st.none(),
            "some_null": st.one_of(st.none(), st.sampled_from(["a", "b"])),
            "numeric": st.integers(0, 2),
            "mixed": st.one_of(st.integers(0, 1), st.sampled_from(["a", "b"])),
        }[label_mode]
        cols["label"] = draw(st.lists(lab, min_size=n, max_size=n))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(NAMES))
        kind = draw(st.sampled_from(["null", "text", "mixed", "int"]))
        vals = {
            "null": st.none(),
            "text": cell_text(),
            "mixed": mixed_value() if fmt == "jsonl" else cell_text(),
            "int": st.integers(-5, 5),
        }[kind]
        cols[name if name not in cols else name + "_"] = draw(
            st.lists(vals, min_size=n, max_size=n)
        )
    vec_mode = draw(st.sampled_from(["none", "none", "good", "good", "nan", "null", "ragged"]))
    if vec_mode != "none":
        dim = 4
        vecs = [list(map(float, np.random.default_rng(i).normal(size=dim))) for i in range(n)]
        if n and vec_mode == "nan":
            vecs[0][1] = math.nan
        elif n and vec_mode == "null":
            vecs[-1] = None
        elif n and vec_mode == "ragged":
            vecs[0] = vecs[0][:2]
        cols["vec"] = vecs
    dup = draw(st.booleans()) and draw(st.integers(0, 4)) == 0  # duplicated column name
    seeded = draw(st.booleans())  # ingest into a store that already holds a split
    opts = []
    if draw(st.integers(0, 3)) == 0 and "label" in cols:
        opts += ["--label", draw(st.sampled_from(["label", "none"]))]
    if draw(st.integers(0, 3)) == 0:
        opts += ["--text", text_name]
    if vec_mode != "none" and draw(st.booleans()):
        opts += ["--vector", "vec"]
    export_fmt = draw(st.sampled_from(["parquet", "csv", "jsonl"]))
    return {
        "fmt": fmt,
        "n": n,
        "cols": cols,
        "dup": dup,
        "seeded": seeded,
        "opts": opts,
        "export": export_fmt,
        "label_mode": label_mode,
        "vec_mode": vec_mode,
    }


# --- writers --------------------------------------------------------------------------------------
def _csv_field(v) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        v = json.dumps(v)
    s = str(v)
    return '"' + s.replace('"', '""') + '"'


def write_source(spec: dict, folder: Path) -> Path:
    names = list(spec["cols"])
    values = [spec["cols"][c] for c in names]
    if spec["dup"] and names:
        names.append(names[0])
        values.append(values[0])
    n = spec["n"]
    fmt = spec["fmt"]
    path = folder / f"test.{fmt}"
    if fmt == "csv":
        lines = [",".join(_csv_field(c) for c in names)]
        lines += [",".join(_csv_field(v[i]) for v in values) for i in range(n)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        rows = []
        for i in range(n):
            # written by hand so a duplicated key stays duplicated in the file
            parts = [f"{json.dumps(c)}: {json.dumps(v[i])}" for c, v in zip(names, values)]
            rows.append("{" + ", ".join(parts) + "}")
        path.write_text("\n".join(rows) + ("\n" if rows else ""), encoding="utf-8")
    else:
        arrays = []
        for c, v in zip(names, values):
            if c == "vec":
                arrays.append(pa.array(v, pa.list_(pa.float64())))
            elif all(x is None or isinstance(x, int) for x in v) and any(x is not None for x in v):
                arrays.append(pa.array(v, pa.int64()))
            else:
                arrays.append(pa.array([None if x is None else str(x) for x in v], pa.string()))
        pq.write_table(pa.Table.from_arrays(arrays, names=names), path)
    return path


# --- the properties -------------------------------------------------------------------------------
def _check(r: Result, db: Path, before: dict, step: str, spec: dict) -> bool:
    """No traceback; exit 0, or exit 2 with the problem and the fix and the store unchanged."""
    COUNTS["steps"] += 1
    where = (
        f"{step} on {spec['fmt']} n={spec['n']} label={spec['label_mode']} "
        f"vec={spec['vec_mode']} opts={spec['opts']} dup={spec['dup']}"
    )
    assert not r.traceback, f"{where}: traceback\n{r}\n{r.exc!r}"
    assert r.code in (0, 2), f"{where}: exit {r.code}\n{r}"
    if r.code == 2:
        assert "error:" in r.stderr and "fix:" in r.stderr, f"{where}: unclear error\n{r}"
        # (a store that did not exist before must still not exist: snapshot {} means no file)
        assert snapshot(db) == before, f"{where}: the failed command changed the store"
        return False
    return True


_TEMPLATE: dict[str, Path] = {}
_TEMPLATE_ROWS = 8


def _seeded_store(folder: Path) -> Path:
    """A copy of a store that holds a good `train` split (built once per session)."""
    if "db" not in _TEMPLATE:
        tdir = Path(tempfile.mkdtemp(prefix="dc_fuzz_tpl_"))
        src = tdir / "train.csv"
        pl.DataFrame(
            {
                "text": [f"good row number {i} of text" for i in range(_TEMPLATE_ROWS)],
                "label": ["pos", "neg"] * (_TEMPLATE_ROWS // 2),
            }
        ).write_csv(src)
        r = run_cli("ingest", src, "--db", tdir / "tpl.duckdb")
        assert r.code == 0, str(r)
        _TEMPLATE["db"] = tdir / "tpl.duckdb"
    db = folder / "s.duckdb"
    shutil.copy(_TEMPLATE["db"], db)
    return db


def run_case(spec: dict) -> None:
    COUNTS["cases"] += 1
    if os.environ.get("DATACURE_FUZZ_LOG"):
        with open(os.environ["DATACURE_FUZZ_LOG"], "a") as f:
            f.write(
                json.dumps(
                    {k: v for k, v in spec.items() if k != "cols"}
                    | {"columns": list(spec["cols"]), "counts": dict(COUNTS)}
                )
                + "\n"
            )
    folder = Path(tempfile.mkdtemp(prefix="dc_fuzz_"))
    try:
        src = write_source(spec, folder)
        db = _seeded_store(folder) if spec["seeded"] else folder / "s.duckdb"
        before = snapshot(db)
        ok = _check(run_cli("ingest", src, "--db", db, *spec["opts"]), db, before, "ingest", spec)
        COUNTS["ingest_ok" if ok else "ingest_refused"] += 1
        if not ok:
            return
        n_store = int(
            run_cli(
                "sql", "SELECT count(*) FROM samples", "--db", db, "--format", "csv"
            ).stdout.split()[-1]
        )
        n_store -= _TEMPLATE_ROWS if spec["seeded"] else 0
        assert n_store == spec["n"], f"{spec}: ingested {n_store} rows of {spec['n']}"
        before = snapshot(db)
        _check(
            run_cli("embed", "--db", db, "--model", "hash:32", "--batch-size", "4"),
            db,
            before,
            "embed",
            spec,
        )
        COUNTS["embed_runs"] += 1
        before = snapshot(db)
        _check(run_cli("audit", "--db", db), db, before, "audit", spec)
        before = snapshot(db)
        _check(run_cli("issues", "--db", db, "--top", "5"), db, before, "issues", spec)
        before = snapshot(db)
        out = folder / "out"
        ok = _check(
            run_cli("export", out, "--db", db, "--format", spec["export"]),
            db,
            before,
            "export",
            spec,
        )
        assert snapshot(db) == before, "export changed the store"
        if ok:
            man = json.loads((out / "manifest.json").read_text())
            assert set(man["files"]) == set(man["splits"]), man
    finally:
        shutil.rmtree(folder, ignore_errors=True)


FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,  # the default suite draws the same cases every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    # no shrinking: each step runs the CLI (seconds); a failure prints its whole spec anyway
    phases=[Phase.explicit, Phase.generate],
)


@FUZZ
@given(sources())
def test_fuzzed_sources_never_traceback_nor_half_write(spec):
    run_case(spec)


@pytest.mark.slow
@settings(
    FUZZ, max_examples=int(os.environ.get("DATACURE_FUZZ_SLOW_EXAMPLES", "300")), derandomize=False
)
@given(sources())
def test_fuzzed_sources_many(spec):
    run_case(spec)


def test_fuzz_counts_reported():
    """Printed with -s / in the log: how many fuzzed cases ran and how they ended."""
    print(f"\nfuzz: {COUNTS}")
    if COUNTS["cases"]:
        assert COUNTS["cases"] >= min(FUZZ_EXAMPLES, 1)
        assert COUNTS["ingest_ok"] and COUNTS["ingest_refused"], COUNTS  # both paths exercised
