"""Helpers shared by the hardening tests (fuzz, interrupt, untrusted files, SQL, concurrency).

`run_cli` goes through `cli.main()`, the real entry point with its error handling, in process;
`run_proc` runs the installed `datacure` script in a subprocess. `snapshot` fingerprints every
table of a store (schema and content), so a test can assert that a failed or killed command
left the store exactly as it was.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
DATACURE = ROOT / ".venv" / "bin" / "datacure"
PYTHON = ROOT / ".venv" / "bin" / "python"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    exc: BaseException | None = None  # an exception that escaped main(): a traceback

    @property
    def traceback(self) -> bool:
        return self.exc is not None or "Traceback (most recent call last)" in self.stderr

    def __str__(self) -> str:
        return (
            f"exit {self.code}\n--- stdout\n{self.stdout[-2000:]}"
            f"\n--- stderr\n{self.stderr[-3000:]}"
        )


def run_cli(*args: str, env: dict | None = None) -> Result:
    """`datacure ARGS` in this process through `cli.main()` (exit code as the shell sees it)."""
    from datacure import cli

    old_argv, old_handler = sys.argv, signal.getsignal(signal.SIGINT)
    old_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    sys.argv = ["datacure", *map(str, args)]
    o, e = io.StringIO(), io.StringIO()
    code, exc = 0, None
    try:
        with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
            cli.main()
    except SystemExit as x:
        code = x.code if isinstance(x.code, int) else (0 if x.code is None else 1)
    except BaseException as x:  # noqa: BLE001 - anything escaping main() is a traceback
        code, exc = 1, x
    finally:
        sys.argv = old_argv
        signal.signal(signal.SIGINT, old_handler)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Result(code, o.getvalue(), e.getvalue(), exc)


def proc_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_proc(*args: str, timeout: float = 120, env: dict | None = None, cwd=None) -> Result:
    """The installed `datacure` script in a subprocess."""
    p = subprocess.run(
        [str(DATACURE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or proc_env(),
        cwd=cwd,
        check=False,
    )
    return Result(p.returncode, p.stdout, p.stderr)


def snapshot(db: str | os.PathLike) -> dict:
    """{table: (columns with types, row count, content digest)} for every table in the store.

    Order-independent: rows are digested as text and sorted. Opened read-only, so taking a
    snapshot never changes what it measures."""
    db = Path(db)
    if not db.exists():
        return {}
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                "ORDER BY 1"
            ).fetchall()
        ]
        snap = {}
        for t in tables:
            q = '"' + t.replace('"', '""') + '"'
            cols = con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = ? AND table_schema = 'main' ORDER BY ordinal_position",
                [t],
            ).fetchall()
            n, digest = con.execute(
                f"SELECT count(*), md5(coalesce(string_agg(r, chr(30) ORDER BY r), '')) "
                f"FROM (SELECT CAST(x AS VARCHAR) AS r FROM {q} x)"
            ).fetchall()[0]
            snap[t] = (tuple(cols), n, digest)
        return snap
    finally:
        con.close()


def digest(db: str | os.PathLike, table: str, exclude: tuple[str, ...] = ()) -> tuple[int, str]:
    """(rows, content digest) of one table, leaving out columns such as timestamps."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        q = '"' + table.replace('"', '""') + '"'
        ex = f" EXCLUDE ({', '.join(exclude)})" if exclude else ""
        return tuple(
            con.execute(
                f"SELECT count(*), md5(coalesce(string_agg(r, chr(30) ORDER BY r), '')) "
                f"FROM (SELECT CAST(x AS VARCHAR) AS r FROM (SELECT *{ex} FROM {q}) x)"
            ).fetchall()[0]
        )
    finally:
        con.close()
