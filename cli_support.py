"""What the commands in cli.py share: the options several commands take, printing (progress on
stderr, results on stdout, a frame as a table, CSV or JSON, the audit table and its --fail-on
gate) and the exits main() turns errors and Ctrl-C into.

Imports stay light (typer only) so `datacure --help` stays fast: rich and polars are imported
where they print.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import typer

DB_OPT = typer.Option("datacure.duckdb", "--db", help="The store (a DuckDB file).")
ENGINE_OPT = typer.Option(
    "local",
    "--engine",
    help="local (this process) or ray (a Ray cluster: install the ray extra).",
)
RAY_ADDRESS_OPT = typer.Option(
    None,
    "--ray-address",
    help="Join this Ray cluster (e.g. auto, ray://HOST:10001); default: start a local one.",
)
FORMAT_OPT = typer.Option("table", "--format", help="table|csv|json")
SEED_OPT = typer.Option(0, "--seed")


class State:
    """The global flags (--quiet, --verbose) for this process."""

    quiet = False
    verbose = False


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def say(msg: str) -> None:
    """Progress and summaries that are not results: stderr, silenced by --quiet. Rich markup
    is honoured; a message whose user data reads as broken markup is printed as plain text."""
    if not State.quiet:
        from rich.errors import MarkupError

        try:
            console(stderr=True).print(msg)
        except MarkupError:
            console(stderr=True).print(msg, markup=False, emoji=False)


def out(msg) -> None:
    """Results: stdout. Strings are printed verbatim (no markup: they carry user data such as
    column names, which may contain `[...]`)."""
    if isinstance(msg, str):
        console().print(msg, markup=False, emoji=False)
    else:
        console().print(msg)


# --- the store ----------------------------------------------------------------------------------
def open_store(db: str, read_only: bool = False, create: bool = False):
    """The store at `db`. Only `ingest` (and `demo`) create one: every other command on a
    missing path exits 2 with "no store at DB" and leaves no file."""
    from .store import Store

    return Store(db, read_only=read_only, create=create)


@contextmanager
def store_to_create(db: str):
    """The store `ingest` writes to, created when missing: a failed first ingest leaves no
    store file behind (removed while this process still holds the lock on it)."""
    new_store = not Path(db).exists()
    st = open_store(db, create=True)  # a busy store raises here, before any file is removed
    try:
        yield st
    except BaseException:
        if new_store:
            for f in (Path(db), Path(f"{db}.wal")):
                f.unlink(missing_ok=True)
        raise
    finally:
        st.close()


# --- audit ----------------------------------------------------------------------------------------
def parse_fail_on(items: list[str]) -> dict[str, float]:
    """`--fail-on label=0.05,outlier=0.1` (repeatable) as {auditor: fraction}."""
    from .store.errors import InputError

    res = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            name, sep, frac = part.partition("=")
            try:
                val = float(frac)
            except ValueError:
                val = -1.0
            if not sep or not (0.0 <= val <= 1.0):
                raise InputError(
                    f"bad --fail-on {part!r}",
                    "write NAME=FRACTION with FRACTION in [0, 1], e.g. label=0.05",
                )
            res[name.strip()] = val
    return res


def judge_options(benchmark, judge_url, judge_model, judge_key_env) -> dict | None:
    """The contamination auditor's context options, or None when neither a benchmark nor a
    judge is given."""
    if not (benchmark or judge_url):
        return None
    opts = {
        "benchmark": str(benchmark) if benchmark else None,
        "judge_url": judge_url,
        "judge_model": judge_model,
        "judge_key_env": judge_key_env,
    }
    return {k: v for k, v in opts.items() if v is not None} or None


def print_audit(rep, thresholds: dict[str, float]) -> None:
    """The run's table on stdout, then the --fail-on gate: exit 1 when a threshold is breached
    (a gate on a skipped auditor exits 2, raised by `rep.breached`)."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"audit run {rep.run_id} ({rep.seconds:.1f} s)")
    for c in ("auditor", "flagged", "share", "score", "note"):
        t.add_column(c, justify="right" if c in ("flagged", "share", "score") else "left")
    for o in rep.outcomes:
        if o.status == "ok":
            t.add_row(o.name, str(o.num_issues), f"{o.share:.2%}", f"{o.score:.3f}", "")
        else:
            t.add_row(o.name, "-", "-", "-", Text(f"skipped: {o.reason}"))
    out(t)
    breached = rep.breached(thresholds)
    if breached:
        console(stderr=True).print("[red]threshold breached:[/red] " + "; ".join(breached))
        raise typer.Exit(1)


# --- frames ---------------------------------------------------------------------------------------
def print_frame(df, fmt: str, title: str | None = None) -> None:
    """A polars frame on stdout as a table (row count on stderr), CSV or JSON."""
    from .store.errors import InputError

    if fmt == "csv":
        sys.stdout.write(_flat(df).write_csv())
    elif fmt == "json":
        sys.stdout.write(json.dumps(df.to_dicts(), default=str, ensure_ascii=False) + "\n")
    elif fmt == "table":
        from rich.table import Table
        from rich.text import Text

        # Text cells: values are data, never markup ("[/b]" in scraped text must print as is).
        t = Table(title=title)
        for c in df.columns:
            t.add_column(Text(str(c)), overflow="fold", max_width=80)
        for r in df.iter_rows():
            t.add_row(*[Text("" if v is None else str(v)[:400]) for v in r])
        out(t)
        say(f"{len(df)} rows")
    else:
        raise InputError(f"unknown --format {fmt!r}", "use table, csv or json")


def _flat(df):
    """CSV holds no nested or binary values: those cells become JSON text."""
    import polars as pl

    flat = (
        pl.String,
        pl.Categorical,
        pl.Enum,
        pl.Boolean,
        pl.Date,
        pl.Datetime,
        pl.Time,
        pl.Duration,
        pl.Decimal,
        pl.Null,
    )
    odd = [c for c, t in df.schema.items() if not (t.is_numeric() or isinstance(t, flat))]
    if not odd:
        return df
    return df.with_columns(
        pl.col(c).map_elements(
            lambda v: json.dumps(v, default=str, ensure_ascii=False),
            return_dtype=pl.String,
            skip_nulls=True,
        )
        for c in odd
    )


# --- exits ----------------------------------------------------------------------------------------
class InterruptReported(SystemExit):
    """Exit 130 from a command that has itself said what a Ctrl-C left behind."""


REDELIVER_DELAY_S = 0.05


@contextmanager
def redeliver_swallowed_interrupts(interrupted: list):
    """Make a Ctrl-C that Python swallowed count. A SIGINT handler raises KeyboardInterrupt at
    whatever bytecode runs when the signal lands; inside a weakref callback or a destructor
    (importlib's module-lock callbacks run often during an audit's imports) Python cannot
    propagate it, prints "Exception ignored in ..." with a traceback and goes on, so the
    command would finish as if never interrupted. This unraisable hook recognises such a
    KeyboardInterrupt once `interrupted` holds a signal, prints nothing and has the signal
    raised again in the main thread (`_thread.interrupt_main`) from a helper thread a moment
    later: raised from the hook itself, the handler would run inside the hook, where Python
    swallows it once more. Landing in another callback, it comes back here and goes round
    again. Other unraisable exceptions go to the previous hook, which is put back on exit (an
    embedding process that calls `cli.main` more than once does not stack hooks)."""
    import _thread
    import signal
    import time

    previous = sys.unraisablehook

    def again() -> None:
        time.sleep(REDELIVER_DELAY_S)  # the hook has long returned by then
        _thread.interrupt_main(signal.SIGINT)

    def hook(unraisable) -> None:
        if interrupted and issubclass(unraisable.exc_type, KeyboardInterrupt):
            _thread.start_new_thread(again, ())
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous


def interrupted_exit(saved: bool = False) -> None:
    """Exit 130 after a Ctrl-C, saying what it left: nothing changed, or (`saved`: a transaction
    of this command had committed, as when the signal lands after an audit's commit, while it
    prints its summary) the changes made before it."""
    if saved:
        msg = (
            "interrupted after this command saved its changes: the store holds them (an audit, "
            "ingest or repair is saved whole; `embed` keeps the batches it finished: run it "
            "again to go on)"
        )
    else:
        msg = (
            "interrupted: the store is as it was before this command "
            "(`embed` keeps the batches it finished; run it again to go on)"
        )
    console(stderr=True).print(msg)
    sys.exit(130)


INTERNAL_ERROR = 3  # exit code of an exception no part of datacure expected: a bug


def internal_error_exit() -> None:
    """A bug: the exception's traceback, one line saying so, and exit 3, so a CI gate never
    reads a crash as a `--fail-on` breach (Python's own exit code for it is 1, the gate's)."""
    import traceback

    traceback.print_exc()
    console(stderr=True).print(
        "internal error: this is a bug in datacure, not a problem with the input; the "
        f"traceback above says where (exit {INTERNAL_ERROR})"
    )
    sys.exit(INTERNAL_ERROR)


def error_exit(exc) -> None:
    """A DatacureError as `error: PROBLEM` and `fix: FIX` on stderr, then its exit code."""
    from rich.markup import escape

    err = console(stderr=True)
    err.print(f"[red]error:[/red] {escape(str(exc.problem))}", markup=True, emoji=False)
    if exc.fix:
        err.print(f"[yellow]fix:[/yellow] {escape(str(exc.fix))}", markup=True, emoji=False)
    sys.exit(exc.exit_code)
