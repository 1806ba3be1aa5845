"""datacure command line: thin commands that parse options, call one library function, print.

Heavy libraries are imported inside the commands so `datacure --help` stays fast. Errors a user
can fix are printed on stderr as the problem and the fix, with exit code 2; `audit --fail-on`
exits 1 when a threshold is breached.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from .cli_support import (
    DB_OPT,
    ENGINE_OPT,
    FORMAT_OPT,
    RAY_ADDRESS_OPT,
    SEED_OPT,
    InterruptReported,
    State,
    error_exit,
    internal_error_exit,
    interrupted_exit,
    judge_options,
    open_store,
    out,
    parse_fail_on,
    print_audit,
    print_frame,
    redeliver_swallowed_interrupts,
    say,
    store_to_create,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="datacure",
    help=(
        "Audit a labelled text or image dataset before training, repair it, "
        "generate the missing data."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        out(f"datacure {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print results only, no progress."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Print more detail (timings of long steps)."
    ),
):
    State.quiet = quiet
    State.verbose = verbose
    if quiet:
        os.environ["DATACURE_QUIET"] = "1"
    if verbose:  # read by store.progress (step timings) and any library code that says more
        os.environ["DATACURE_VERBOSE"] = "1"


# --- ingest / embed -------------------------------------------------------------------------------
@app.command()
def ingest(
    source: str = typer.Argument(
        ..., help="File or folder: CSV, TSV, Parquet, JSONL, HF dataset, image folder."
    ),
    db: str = DB_OPT,
    split: str | None = typer.Option(None, "--split", help="Name of the split these rows form."),
    split_column: str | None = typer.Option(
        None, "--split-column", help="Column naming each row's split."
    ),
    label: str | None = typer.Option(
        None,
        "--label",
        help="Label column (inferred when unambiguous); 'none': an unlabelled split.",
    ),
    text: str | None = typer.Option(
        None, "--text", help="Text column (inferred when unambiguous; 'none': no text)."
    ),
    image: str | None = typer.Option(
        None,
        "--image",
        help=(
            "Column of image paths, relative to the source's folder (inferred only when its "
            "files exist; 'none': no images)."
        ),
    ),
    vector: str | None = typer.Option(
        None, "--vector", help="Column of precomputed vectors to store as an embedding."
    ),
    fmt: str | None = typer.Option(
        None, "--format", help="csv|tsv|parquet|jsonl|hf|imagefolder (default: from the name)."
    ),
    replace: bool = typer.Option(False, "--replace", help="Replace a split that already exists."),
    allow_outside: bool = typer.Option(
        False, "--allow-outside-paths", help="Allow image paths outside the source folder."
    ),
    engine: str = ENGINE_OPT,
    ray_address: str | None = RAY_ADDRESS_OPT,
):
    """Read a dataset into the store (one transaction: all or nothing)."""
    from .engine import get_engine

    eng = get_engine(engine, ray_address)
    with store_to_create(db) as st:
        rep = eng.ingest(
            st,
            source,
            split=split,
            split_column=split_column,
            label=label,
            text=text,
            image=image,
            vector=vector,
            fmt=fmt,
            replace=replace,
            allow_outside=allow_outside,
            progress=say,
        )
    out(rep.summary())


@app.command()
def embed(
    db: str = DB_OPT,
    model: str | None = typer.Option(
        None,
        "--model",
        help="Local path or cached model name (default: all-MiniLM-L6-v2 for text).",
    ),
    column: str | None = typer.Option(
        None, "--column", help="Column to embed (default: the text or image column)."
    ),
    batch_size: int = typer.Option(256, "--batch-size", help="Rows per batch."),
    device: str | None = typer.Option(
        None, "--device", help="cpu or cuda (default: cuda when available)."
    ),
    engine: str = ENGINE_OPT,
    ray_address: str | None = RAY_ADDRESS_OPT,
):
    """Embed the text or image column in batches (resumable: a rerun skips rows done)."""
    from .engine import get_engine

    eng = get_engine(engine, ray_address)
    with open_store(db) as st:
        rep = eng.embed(
            st, model=model, column=column, batch_size=batch_size, device=device, progress=say
        )
    out(rep.summary())


# --- audit ----------------------------------------------------------------------------------------
@app.command()
def audit(
    db: str = DB_OPT,
    auditors: str | None = typer.Option(
        None, "--auditors", help="Comma-separated auditor names (default: all)."
    ),
    reference: str | None = typer.Option(
        None,
        "--reference",
        help="Reference split for drift/leakage/contamination (default: train).",
    ),
    splits: str | None = typer.Option(
        None, "--splits", help="Comma-separated splits to audit (default: all)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML or JSON file with auditor parameters."
    ),
    fail_on: list[str] = typer.Option(
        [], "--fail-on", help="NAME=FRACTION: exit 1 when more than FRACTION of rows are flagged."
    ),
    embedding: str | None = typer.Option(
        None, "--embedding", help="Embedding key (default: the latest)."
    ),
    pred_probs: str | None = typer.Option(
        None, "--pred-probs", help="Your own out-of-sample pred_probs: a .npy file or a column."
    ),
    k: int = typer.Option(10, "--k", help="Neighbours in the kNN graph."),
    seed: int = SEED_OPT,
    benchmark: Path | None = typer.Option(
        None, "--benchmark", help="A benchmark file to check contamination against."
    ),
    judge_url: str | None = typer.Option(
        None, "--judge-url", help="OpenAI-compatible endpoint for the contamination judge."
    ),
    judge_model: str | None = typer.Option(None, "--judge-model"),
    judge_key_env: str = typer.Option(
        "OPENAI_API_KEY",
        "--judge-key-env",
        help="Environment variable holding the judge's API key.",
    ),
    engine: str = ENGINE_OPT,
    ray_address: str | None = RAY_ADDRESS_OPT,
):
    """Run auditors; every flag becomes a row of `issues`."""
    from .auditor.runner import check_gate_names
    from .engine import get_engine
    from .store.config import load_config

    thresholds = parse_fail_on(fail_on)
    check_gate_names(thresholds)  # a typo fails before the work, not after
    cfg = load_config(config, "audit config") if config is not None else None
    names = [a.strip() for a in auditors.split(",") if a.strip()] if auditors else None
    ctx_opts = judge_options(benchmark, judge_url, judge_model, judge_key_env)
    eng = get_engine(engine, ray_address)
    with open_store(db) as st:
        rep = eng.audit(
            st,
            auditors=names,
            config=cfg,
            splits=[s.strip() for s in splits.split(",")] if splits else None,
            reference=reference,
            embedding=embedding,
            k=k,
            seed=seed,
            pred_probs=pred_probs,
            progress=say,
            context_options=ctx_opts,
        )
    print_audit(rep, thresholds)


@app.command()
def issues(
    db: str = DB_OPT,
    auditor: str | None = typer.Option(None, "--auditor", help="Only this auditor's flags."),
    top: int = typer.Option(20, "--top", help="How many rows to show, worst first."),
    run: int | None = typer.Option(None, "--run", help="Run id (default: the latest)."),
    fmt: str = FORMAT_OPT,
):
    """Show the worst flagged rows with their text or image, given and suggested label."""
    from .auditor.views import worst_issues

    with open_store(db, read_only=True) as st:
        df = worst_issues(st, auditor=auditor, top=top, run_id=run)
    print_frame(df, fmt, title="issues")


# --- look -----------------------------------------------------------------------------------------
@app.command()
def sql(
    query: str = typer.Argument(..., help="Any DuckDB SQL over the store's tables."),
    db: str = DB_OPT,
    fmt: str = FORMAT_OPT,
    write: bool = typer.Option(False, "--write", help="Allow statements that change the store."),
    limit: int = typer.Option(10_000, "--limit", help="Most rows to print (0: all)."),
):
    """Run SQL on the store (read-only unless --write)."""
    from .store.query import run_sql

    df = run_sql(db, query, write=write, limit=limit)
    if df is not None:
        print_frame(df, fmt)


@app.command()
def info(db: str = DB_OPT):
    """List tables, splits, counts and embeddings."""
    from .store.query import store_info

    with open_store(db, read_only=True) as st:
        out(store_info(st))


# --- repair / export / report ---------------------------------------------------------------------
@app.command()
def repair(
    db: str = DB_OPT,
    rebalance_by: str | None = typer.Option(
        None, "--rebalance-by", help="Column (or 'slice') whose groups x label to balance."
    ),
    strategy: str = typer.Option(
        "undersample", "--strategy", help="undersample|oversample|generate"
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML or JSON repair policy."),
    drop_outliers: bool = typer.Option(
        False, "--drop-outliers", help="Also drop rows flagged as outliers."
    ),
    relabel_threshold: float = typer.Option(
        0.8,
        "--relabel-threshold",
        help="Relabel when the suggested label's probability is at least this.",
    ),
    drop_from: str | None = typer.Option(
        None, "--drop-from", help="Split to drop leaked/contaminated rows from (default: train)."
    ),
    max_cell_drop_share: float | None = typer.Option(
        None,
        "--max-cell-drop-share",
        help=(
            "Refuse a plan dropping more than this share of any label x group cell on audit "
            "findings (default 0.25; 1 accepts any plan)."
        ),
    ),
    ratio: float | None = typer.Option(
        None,
        "--ratio",
        help="Target size of each group relative to the largest (default 1: balanced).",
    ),
    synthetic_share: float | None = typer.Option(
        None,
        "--synthetic-share",
        help=(
            "With generate: share of each gap filled with generated samples, "
            "the rest copies of real rows (default 0.5)."
        ),
    ),
    llm_url: str | None = typer.Option(
        None, "--llm-url", help="OpenAI-compatible endpoint for text generation."
    ),
    llm_model: str | None = typer.Option(None, "--llm-model"),
    llm_key_env: str = typer.Option("OPENAI_API_KEY", "--llm-key-env"),
    local_model: str | None = typer.Option(
        None,
        "--local-model",
        help="Path of a local causal LM (text) or diffusers pipeline (images).",
    ),
    seed: int = SEED_OPT,
):
    """Plan repairs from the latest audit as rows of `edits` (an overlay, samples untouched)."""
    from .repair.plan import plan_repairs

    with open_store(db) as st:
        rep = plan_repairs(
            st,
            rebalance_by=rebalance_by,
            strategy=strategy,
            config=config,
            drop_outliers=drop_outliers,
            relabel_threshold=relabel_threshold,
            drop_from=drop_from,
            max_cell_drop_share=max_cell_drop_share,
            ratio=ratio,
            synthetic_share=synthetic_share,
            llm_url=llm_url,
            llm_model=llm_model,
            llm_key_env=llm_key_env,
            local_model=local_model,
            seed=seed,
            progress=say,
        )
    out(rep.summary())


@app.command()
def edits(
    db: str = DB_OPT,
    top: int = typer.Option(50, "--top"),
    fmt: str = FORMAT_OPT,
    accept: str | None = typer.Option(
        None,
        "--accept",
        help="Accept edits: comma-separated edit ids, or 'all', or an action/auditor name.",
    ),
    reject: str | None = typer.Option(
        None, "--reject", help="Reject edits: ids, 'all', or an action/auditor name."
    ),
):
    """List planned edits; accept or reject them by id or by rule."""
    from .repair.edits import list_edits, review_edits

    with open_store(db, read_only=not (accept or reject)) as st:
        if accept or reject:
            n = review_edits(st, accept=accept, reject=reject)
            say(f"{n} edits updated")
        df = list_edits(st, top=top)
    print_frame(df, fmt, title="edits")


@app.command()
def review(
    db: str = DB_OPT,
    auditor: str | None = typer.Option(None, "--auditor"),
    top: int = typer.Option(50, "--top"),
):
    """Walk through flagged rows, worst first: accept, reject, relabel or skip."""
    from .repair.review import review_loop

    with open_store(db) as st:
        rep = review_loop(st, auditor=auditor, top=top)
    if rep.interrupted:  # the loop said what was saved: not "the store is as it was"
        raise InterruptReported(130)


@app.command()
def serve(
    db: str = DB_OPT,
    port: int = typer.Option(8765, "--port", help="Port to listen on (0: any free port)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind; any but loopback needs a token."
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        help="Require this token on every request (generated when --host is not loopback).",
    ),
):
    """Browse, query and review the store in a browser (a local web app; Ctrl-C stops it)."""
    from .serve import serve as do_serve

    def show(msg: str) -> None:
        out(msg)
        sys.stdout.flush()

    try:
        do_serve(db, host=host, port=port, token=token, say=show)
    except KeyboardInterrupt:
        pass
    say("stopped")


@app.command()
def export(
    out_dir: str = typer.Argument(
        ..., metavar="OUT", help="Folder to write the repaired splits into."
    ),
    db: str = DB_OPT,
    fmt: str = typer.Option("parquet", "--format", help="parquet|csv|jsonl|hf|imagefolder"),
    seed: int | None = typer.Option(
        None, "--seed", help="Shuffle each split's rows with this seed (default: by row id)."
    ),
):
    """Write each split with edits applied, plus OUT/manifest.json."""
    from .repair.export import export as do_export

    with open_store(db, read_only=True) as st:  # export only reads: others may read meanwhile
        rep = do_export(st, out_dir, fmt=fmt, seed=seed)
    out(rep.summary())


@app.command()
def report(
    db: str = DB_OPT,
    out_path: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the summary as JSON."),
    manifest: Path | None = typer.Option(
        None,
        "--manifest",
        help="An export's manifest.json to show (export leaves the store untouched).",
    ),
):
    """Write a standalone HTML report (and optionally JSON)."""
    from .report import write_report

    with open_store(db, read_only=True) as st:
        path = write_report(st, out_path, json_path=json_path, manifest_path=manifest)
    out(f"report written to {path}")


@app.command()
def demo(
    workdir: Path = typer.Option(
        Path("datacure-demo"), "--dir", help="Where to put the demo store and outputs."
    ),
):
    """Run the whole flow on bundled data: ingest, embed, audit, report, repair, export."""
    from .demo import run_demo

    run_demo(workdir, say=say, out=out)


def _commits() -> int:
    """Transactions committed in this process so far (`Store.commits`; none when the store
    module was never imported, which `--help` and friends never do)."""
    db = sys.modules.get(f"{__package__}.store.db")
    return db.Store.commits if db is not None else 0


def main() -> None:
    """Entry point: run the app, turning DatacureError into a clear message and exit code 2.

    Ctrl-C exits 130 with a one-line message. DuckDB turns a SIGINT that lands inside a query
    into `RuntimeError("Query interrupted")` (and typer turns KeyboardInterrupt into a silent
    exit 130), so the signal is recorded here and any failure after it counts as the interrupt;
    the transaction that was open has been rolled back by then. A KeyboardInterrupt raised where
    Python cannot propagate it (a weakref callback) is raised again outside it
    (`redeliver_swallowed_interrupts`)."""
    import signal

    from .store.errors import DatacureError

    interrupted: list[int] = []
    commits = _commits()

    def _on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    def stop() -> None:
        interrupted_exit(saved=_commits() > commits)

    try:
        previous = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread (embedded use): keep Python's default
        previous = None
    try:
        with redeliver_swallowed_interrupts(interrupted):
            try:
                app()
            except DatacureError as exc:
                if interrupted:
                    stop()
                error_exit(exc)
            except KeyboardInterrupt:
                stop()
            except SystemExit as exc:
                if (
                    interrupted
                    and exc.code not in (0, None)
                    and not isinstance(exc, InterruptReported)
                ):
                    stop()
                raise
            except Exception:  # noqa: BLE001 - a bug: its traceback, and exit 3
                if interrupted:
                    stop()
                internal_error_exit()
    finally:  # an embedding process that calls main() again, or goes on, gets its own back
        if previous is not None and signal.getsignal(signal.SIGINT) is _on_sigint:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    main()
