"""`datacure sql` is read-only unless --write, a failed query changes nothing, and two processes
on one store either share it (readers) or the second gets a clear "store is busy" (exit 2).

Planted faults: writes without --write (INSERT, UPDATE, DELETE, DROP, CREATE, ALTER, a write
hidden after a SELECT), a failing statement after a successful one under --write, BEGIN/COMMIT
inside --write, result types polars cannot import, Rich markup in data and in error messages, a
second writer, a reader during a write, a writer during a read, racing ingests.
"""

from __future__ import annotations

import subprocess
import time

import polars as pl
import pytest
from hardening_util import PYTHON, ROOT, proc_env, run_cli, snapshot
from helpers import make_store


@pytest.fixture
def store_path(tmp_path):
    db = tmp_path / "s.duckdb"
    frame = pl.DataFrame(
        {
            "text": ["a cat sat", "a dog ran", "[/b] broken [red]markup", "plain words here"],
            "label": ["x", "y", "x", "y"],
        }
    )
    make_store(db, frame, text="text").close()
    return db


# --- sql: read-only by default --------------------------------------------------------------------
WRITES = [
    "INSERT INTO samples (row_id, split) VALUES (99, 'train')",
    "UPDATE samples SET label = 'z'",
    "DELETE FROM samples",
    "DROP TABLE samples",
    "CREATE TABLE evil AS SELECT 1 AS x",
    "ALTER TABLE samples ADD COLUMN evil INTEGER",
    "SELECT 1; DELETE FROM samples",
    "CHECKPOINT; INSERT INTO meta VALUES ('k', '1')",
]


def test_sql_write_without_flag_is_refused_and_changes_nothing(store_path):
    before = snapshot(store_path)
    for query in WRITES:
        r = run_cli("sql", query, "--db", store_path)
        assert not r.traceback, f"{query}: {r}"
        assert r.code == 2, f"{query}: {r}"
        assert "read-only mode" in r.stderr  # DuckDB's own message is shown
        assert "--write" in r.stderr  # and the fix
        assert snapshot(store_path) == before


def test_sql_write_flag_applies(store_path):
    r = run_cli(
        "sql", "UPDATE samples SET label = 'z' WHERE row_id = 0", "--db", store_path, "--write"
    )
    assert r.code == 0, str(r)
    r = run_cli(
        "sql", "SELECT label FROM samples WHERE row_id = 0", "--db", store_path, "--format", "csv"
    )
    assert r.code == 0 and r.stdout.split() == ["label", "z"], str(r)


FAILING_WRITES = [
    ("UPDATE samples SET label = 'q'; SELECT * FROM no_such_table", "Catalog Error"),
    ("DELETE FROM meta; INSERT INTO samples (row_id) VALUES ('not a number')", "Conversion"),
    ("DROP TABLE meta; SELEC 1", "Parser Error"),
]


def test_sql_error_under_write_rolls_back_everything(store_path):
    before = snapshot(store_path)
    for query, duck in FAILING_WRITES:
        r = run_cli("sql", query, "--db", store_path, "--write")
        assert not r.traceback, f"{query}: {r}"
        assert r.code == 2 and duck in r.stderr, f"{query}: {r}"
        assert "rolled back" in r.stderr
        assert snapshot(store_path) == before, query


def test_sql_error_read_only_prints_duckdb_message(store_path):
    before = snapshot(store_path)
    r = run_cli("sql", "SELECT no_such_column FROM samples", "--db", store_path)
    assert r.code == 2 and "Binder Error" in r.stderr and "no_such_column" in r.stderr, str(r)
    assert snapshot(store_path) == before


def test_sql_write_refuses_transaction_control(store_path):
    before = snapshot(store_path)
    r = run_cli("sql", "COMMIT; DELETE FROM samples", "--db", store_path, "--write")
    assert r.code == 2 and "BEGIN/COMMIT/ROLLBACK" in r.stderr, str(r)
    assert snapshot(store_path) == before


def test_sql_on_missing_store_is_clear(tmp_path):
    r = run_cli("sql", "SELECT 1", "--db", tmp_path / "nope.duckdb")
    assert r.code == 2 and "no store at" in r.stderr, str(r)
    assert not (tmp_path / "nope.duckdb").exists()


# Result types polars cannot import (INTERVAL, UNION, BIGNUM, intervals inside structs) or CSV
# cannot hold (nested, binary, fixed arrays) used to end in a traceback or a Rust panic.
ODD_RESULTS = [
    "interval 1 day",
    "union_value(k := 1)",
    "1::BIGNUM",
    "{'a': interval 1 day}",
    "{'a': 1, 'b': [1, NULL]}",
    "map([1], [2])",
    "'\\x00'::BLOB",
    "[1, 2]::INT[2]",
    "1::UHUGEINT",
    "'[/x] not markup'",
]


def test_sql_prints_any_result_type(store_path):
    for fmt in ("table", "csv", "json"):
        for expr in ODD_RESULTS:
            r = run_cli("sql", f"SELECT {expr} AS v, 2 AS v", "--db", store_path, "--format", fmt)
            assert not r.traceback and r.code == 0, f"{expr} as {fmt}: {r}"
        r = run_cli("sql", "SELECT '[/x] not markup' AS v", "--db", store_path, "--format", fmt)
        assert "[/x] not markup" in r.stdout


def test_markup_in_data_and_errors_prints_verbatim(store_path):
    r = run_cli("sql", "SELECT text FROM samples ORDER BY row_id", "--db", store_path)
    assert r.code == 0 and "[/b] broken [red]markup" in r.stdout, str(r)
    r = run_cli("sql", 'SELECT "[/x]" FROM samples', "--db", store_path)
    assert not r.traceback and r.code == 2 and "[/x]" in r.stderr, str(r)


def test_sql_limit_pushed_down(store_path):
    r = run_cli(
        "sql",
        "SELECT * FROM range(1000000000)",
        "--db",
        store_path,
        "--limit",
        "3",
        "--format",
        "csv",
    )
    assert r.code == 0 and r.stdout.split() == ["range", "0", "1", "2"], str(r)


# --- two processes on one store ------------------------------------------------------------------
HOLD = """
import sys, time
from datacure.store import Store
st = Store(sys.argv[1], read_only=sys.argv[2] == "ro")
if sys.argv[2] == "rw":
    with st.transaction():
        st.execute("INSERT INTO meta VALUES ('holder', '1')")
print("ready", flush=True)
time.sleep(float(sys.argv[3]))
st.close()
print("closed", time.monotonic(), flush=True)  # one clock for every process (CLOCK_MONOTONIC)
"""


def _hold(db, mode: str, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen(
        [str(PYTHON), "-c", HOLD, str(db), mode, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=proc_env(),
    )
    assert p.stdout.readline().strip() == "ready"
    return p


def _release(p: subprocess.Popen) -> None:
    p.terminate()
    p.wait(timeout=30)


# The holder is another process (DuckDB's lock is per process); the command under test runs
# in this process through cli.main(), which is what the `datacure` script runs.
def test_readers_share_a_store(store_path):
    holder = _hold(store_path, "ro", 60)
    try:
        r = run_cli(
            "sql", "SELECT count(*) AS n FROM samples", "--db", store_path, "--format", "csv"
        )
        assert r.code == 0 and r.stdout.split() == ["n", "4"], str(r)
        r = run_cli("export", store_path.parent / "out", "--db", store_path)  # export only reads
        assert r.code == 0, str(r)
        r = run_cli("info", "--db", store_path)
        assert r.code == 0 and "samples: 4 rows" in r.stdout, str(r)
    finally:
        _release(holder)


def test_second_writer_gets_store_busy(store_path, tmp_path):
    src = tmp_path / "test.csv"
    src.write_text("text,label\nsome new text,x\nmore new text,y\n")
    holder = _hold(store_path, "rw", 60)
    try:
        # a second writer, and a reader while the first writes: both "store is busy", exit 2
        for args in (
            ("ingest", src, "--db", store_path),
            ("sql", "SELECT count(*) FROM samples", "--db", store_path),
        ):
            r = run_cli(*args)
            assert r.code == 2 and not r.traceback, str(r)
            assert "store is busy" in r.stderr and "Traceback" not in r.stderr, str(r)
            assert "is writing it" in r.stderr
    finally:
        _release(holder)
    before = snapshot(store_path)
    assert before["samples"][1] == 4  # the busy ingest wrote nothing; the holder's commit stays
    r = run_cli(
        "sql", "SELECT value FROM meta WHERE key = 'holder'", "--db", store_path, "--format", "csv"
    )
    assert r.stdout.split() == ["value", "1"], str(r)
    # rerun now that the store is free: it completes
    r = run_cli("ingest", src, "--db", store_path)
    assert r.code == 0, str(r)
    assert snapshot(store_path)["samples"][1] == 6


def test_writer_while_reading_is_busy_then_waits_with_timeout(store_path, tmp_path):
    src = tmp_path / "test.csv"
    src.write_text("text,label\nsome new text,x\n")
    holder = _hold(store_path, "ro", 60)
    try:
        r = run_cli("ingest", src, "--db", store_path)
        assert r.code == 2 and "store is busy" in r.stderr and "reading" in r.stderr, str(r)
    finally:
        _release(holder)
    # with DATACURE_LOCK_TIMEOUT the second writer waits for the first to finish
    holder = _hold(store_path, "rw", 3)
    t0 = time.monotonic()
    r = run_cli("ingest", src, "--db", store_path, env={"DATACURE_LOCK_TIMEOUT": "60"})
    t1 = time.monotonic()
    closed = float(holder.communicate(timeout=60)[0].split()[-1])
    assert r.code == 0, str(r)
    assert t0 < closed <= t1  # it began while the store was held and ended after: it waited
    r = run_cli("sql", "SELECT 1", "--db", store_path, env={"DATACURE_LOCK_TIMEOUT": "x"})
    assert r.code == 2 and "DATACURE_LOCK_TIMEOUT" in r.stderr, str(r)


def test_racing_ingests_never_corrupt(tmp_path):
    db = tmp_path / "race.duckdb"
    rows = "\n".join(f"text number {i} here,{'xy'[i % 2]}" for i in range(200))
    srcs = []
    for name in ("train", "test"):
        p = tmp_path / f"{name}.csv"
        p.write_text("text,label\n" + rows + "\n")
        srcs.append(p)
    procs = [
        subprocess.Popen(
            [str(ROOT / ".venv/bin/datacure"), "ingest", str(s), "--db", str(db)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=proc_env(),
        )
        for s in srcs
    ]
    done = []
    for s, p in zip(srcs, procs):
        _out, err = p.communicate(timeout=120)
        assert "Traceback" not in err, err
        assert p.returncode in (0, 2), err
        if p.returncode == 2:
            assert "store is busy" in err, err
        else:
            done.append(s.stem)
    assert done, "at least one ingest must have won"
    r = run_cli(
        "sql",
        "SELECT split, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1",
        "--db",
        db,
        "--format",
        "csv",
    )
    assert r.code == 0
    got = dict(line.split(",") for line in r.stdout.split()[1:])
    assert got == dict.fromkeys(sorted(done), "200")
    for s in srcs:  # rerunning the losers completes
        if s.stem not in done:
            assert run_cli("ingest", s, "--db", db).code == 0


def test_db_that_is_not_a_store_is_refused(tmp_path):
    """DuckDB opens a CSV given as the database as an in-memory database over it: an ingest
    "succeeded" and kept nothing. Now refused, and the file is left alone."""
    csv = tmp_path / "train.csv"
    csv.write_text("text,label\nhello there world,a\nanother text row,b\n")
    data = csv.read_bytes()
    for args in (
        ("ingest", csv, "--db", csv),
        ("sql", "SELECT 1", "--db", csv),
        ("ingest", csv, "--db", tmp_path),
    ):
        r = run_cli(*args)
        assert not r.traceback and r.code == 2, f"{args}: {r}"
        assert "fix:" in r.stderr
    assert csv.read_bytes() == data
