"""The Python API: `datacure.open(path)` returns a `Store` whose methods call the same library
functions as the command line, with DataFrames in and out.

A `Store` here is a handle on a DuckDB file, not an open connection: each call opens the file,
does its work in the library's own transactions and closes it again, so a notebook never holds
the file lock between cells (a `datacure` command in a terminal can run meanwhile). Only
`ingest` creates the file; every other call on a missing path raises `InputError`.
"""

from __future__ import annotations

import contextlib
import html
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .store import schema as S
from .store.db import DEFAULT_DB
from .store.db import Store as _Connection
from .store.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from .auditor.runner import RunReport
    from .repair.export import ExportReport
    from .repair.plan import RepairReport
    from .store.datadef import DataDefinition
    from .store.embed import EmbedReport
    from .store.ingest import IngestReport


def open(path: str | os.PathLike = DEFAULT_DB) -> Store:
    """A handle on the store at `path` (created by the first `ingest`)."""
    return Store(path)


def _html_table(frame: pl.DataFrame, max_rows: int = 20) -> str:
    """A small escaped HTML table of a frame (for `_repr_html_`)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row)
        + "</tr>"
        for row in frame.head(max_rows).iter_rows()
    )
    more = f"<p>{frame.height - max_rows} more rows</p>" if frame.height > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


class Store:
    """One dataset project in one DuckDB file: ingest, embed, audit, look, repair, export."""

    def __init__(self, path: str | os.PathLike = DEFAULT_DB):
        self.path = Path(path)

    # --- connections ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self, read_only: bool = False, create: bool = False) -> Iterator[_Connection]:
        with _Connection(self.path, read_only=read_only, create=create) as con:
            yield con

    @property
    def exists(self) -> bool:
        return self.path.exists()

    # --- building ---------------------------------------------------------------------------
    def ingest(
        self,
        source: Any,
        *,
        split: str | None = None,
        split_column: str | None = None,
        label: str | None = None,
        text: str | None = None,
        image: str | None = None,
        vector: str | None = None,
        format: str | None = None,
        replace: bool = False,
        allow_outside_paths: bool = False,
        engine: str = "local",
        ray_address: str | None = None,
    ) -> IngestReport:
        """Add a split (or several) from a file or folder path, a polars or pandas DataFrame, a
        pyarrow Table, or a Hugging Face Dataset/DatasetDict. One transaction: all or nothing.
        The first ingest creates the store; a failed first ingest leaves no file behind.
        `engine="ray"` reads a folder or glob of shards in parallel on a Ray cluster
        (`ray_address`, or a local one started for the call)."""
        from .engine import get_engine

        eng = get_engine(engine, ray_address)
        new_store = not self.path.exists()
        con = _Connection(self.path, create=True)
        try:
            return eng.ingest(
                con,
                source,
                split=split,
                split_column=split_column,
                label=label,
                text=text,
                image=image,
                vector=vector,
                fmt=format,
                replace=replace,
                allow_outside=allow_outside_paths,
            )
        except BaseException:
            if new_store:  # removed while this process still holds the lock on it
                for f in (self.path, Path(f"{self.path}.wal")):
                    f.unlink(missing_ok=True)
            raise
        finally:
            con.close()

    def embed(
        self,
        model: str | None = None,
        column: str | None = None,
        device: str | None = None,
        batch_size: int = 256,
        engine: str = "local",
        ray_address: str | None = None,
    ) -> EmbedReport:
        """Embed the text or image column (resumable: rows done before are skipped).
        `engine="ray"`: an actor pool on a Ray cluster, the vectors kept as Parquet shards."""
        from .engine import get_engine

        eng = get_engine(engine, ray_address)
        with self._connect() as con:
            return eng.embed(con, model=model, column=column, batch_size=batch_size, device=device)

    # --- auditing ---------------------------------------------------------------------------
    def audit(
        self,
        auditors: Sequence[str] | str | None = None,
        config: dict | list | str | os.PathLike | None = None,
        reference: str | None = None,
        splits: Sequence[str] | None = None,
        embedding: str | None = None,
        pred_probs: np.ndarray | str | None = None,
        k: int = 10,
        seed: int = 0,
        benchmark: str | os.PathLike | None = None,
        judge_url: str | None = None,
        judge_model: str | None = None,
        judge_key_env: str = "OPENAI_API_KEY",
        progress: Any = None,
        engine: str = "local",
        ray_address: str | None = None,
    ) -> AuditRun:
        """Run auditors (default: all) and record one run. `config` is `{name: params}`, a list
        of `{"auditor": name, ...}`, or a YAML/JSON file; `pred_probs` your own out-of-sample
        probabilities (an array aligned with the audited rows in row_id order, a .npy file, or
        a column). `engine="ray"` builds the kNN graph in partitions and runs the row auditors
        as tasks on a Ray cluster (`ray_address`, or a local one started for the call)."""
        from .engine import get_engine
        from .store.config import load_config

        if isinstance(config, (str, os.PathLike)):
            config = load_config(config, "audit config")
        if isinstance(auditors, str):
            auditors = [a.strip() for a in auditors.split(",") if a.strip()]
        options = {
            "benchmark": str(benchmark) if benchmark is not None else None,
            "judge_url": judge_url,
            "judge_model": judge_model,
            "judge_key_env": judge_key_env if (benchmark or judge_url) else None,
        }
        options = {key: v for key, v in options.items() if v is not None}
        eng = get_engine(engine, ray_address)
        with self._connect() as con:
            rep = eng.audit(
                con,
                auditors=list(auditors) if auditors else None,
                config=config,
                splits=list(splits) if splits else None,
                reference=reference,
                embedding=embedding,
                k=k,
                seed=seed,
                pred_probs=pred_probs,
                progress=progress,
                context_options=options or None,
            )
        return AuditRun(self, rep.run_id, report=rep)

    def run(self, run_id: int | None = None) -> AuditRun:
        """An earlier audit run (default: the latest)."""
        from .auditor.views import resolve_run

        with self._connect(read_only=True) as con:
            return AuditRun(self, resolve_run(con, run_id))

    def runs(self) -> pl.DataFrame:
        """Every audit run: id, times, tool version, status."""
        return self.sql(
            f"SELECT run_id, started_at, finished_at, version, status FROM {S.RUNS} ORDER BY 1"
        )

    def issues(self, auditor: str | None = None, top: int | None = 20) -> pl.DataFrame:
        """Flagged rows of the latest run, worst first (see `AuditRun.issues`)."""
        return self.run().issues(auditor, top=top)

    # --- looking ----------------------------------------------------------------------------
    def sql(self, query: str, limit: int = 0) -> pl.DataFrame:
        """Run read-only SQL over the store; the rows of the last statement (all when `limit`
        is 0). Writes are refused, as with `datacure sql` without `--write`."""
        import polars as pl

        from .store.query import run_sql

        df = run_sql(str(self.path), query, write=False, limit=limit)
        return df if df is not None else pl.DataFrame()

    def definition(self) -> DataDefinition:
        """The data definition ingest wrote: the role (id, split, label, text, metadata, ...)
        and type (numeric, categorical, text, identifier, ...) of every column, plus the text,
        image and label columns (`store.datadef.DataDefinition`; as a table:
        `sql("SELECT * FROM columns")`)."""
        with self._connect(read_only=True) as con:
            return con.data_definition()

    def info(self) -> str:
        """Tables, splits, counts, embeddings and runs, as `datacure info` prints them."""
        from .store.query import store_info

        with self._connect(read_only=True) as con:
            return store_info(con)

    def report(
        self,
        out: str | os.PathLike = "report.html",
        json_path: str | os.PathLike | None = None,
        run_id: int | None = None,
    ) -> Path:
        """Write the standalone HTML report (and its summary as JSON when `json_path`)."""
        from .report import write_report

        with self._connect(read_only=True) as con:
            return write_report(con, out, json_path=json_path, run_id=run_id)

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        token: str | None = None,
        background: bool = False,
    ):
        """Browse, query and review this store in a browser (`datacure serve`). Blocks until
        Ctrl-C; with `background=True` (notebooks) it runs in a thread and returns a handle with
        `.url` and `.stop()`. Binding anything but loopback requires a token (generated when not
        given: `handle.token`)."""
        from .serve import serve

        if not self.path.exists():
            raise InputError(
                f"no store at {self.path}", "ingest data first: `ds.ingest(df, split='train')`"
            )
        try:
            return serve(self.path, host=host, port=port, token=token, background=background)
        except KeyboardInterrupt:
            return None

    # --- repairing --------------------------------------------------------------------------
    def repair(
        self,
        rebalance_by: str | None = None,
        strategy: str = "undersample",
        config: dict | str | os.PathLike | None = None,
        **options: Any,
    ) -> RepairPlan:
        """Plan repairs from the latest audit as `edits` (an overlay; samples stay untouched).
        `options` are the `datacure repair` flags by their Python names (drop_outliers,
        relabel_threshold, drop_from, ratio, synthetic_share, llm_url, llm_model, local_model,
        seed, ...)."""
        from .repair.plan import plan_repairs

        with self._connect() as con:
            rep = plan_repairs(
                con, rebalance_by=rebalance_by, strategy=strategy, config=config, **options
            )
        return RepairPlan(self, rep)

    def edits(self, top: int = 50, status: str | None = None) -> pl.DataFrame:
        """Planned edits with each row's split, label and a preview of its content."""
        from .repair.plan import list_edits

        with self._connect(read_only=True) as con:
            return list_edits(con, top=top, status=status)

    def export(
        self,
        out: str | os.PathLike,
        format: str = "parquet",
        seed: int | None = None,
        splits: Sequence[str] | None = None,
    ) -> ExportReport:
        """Write each split with the edits applied, plus `out/manifest.json` (rows sorted by row
        id; shuffled per split when a `seed` is given)."""
        from .repair.export import export

        with self._connect(read_only=True) as con:
            return export(con, out, fmt=format, seed=seed, splits=list(splits) if splits else None)

    # --- display ----------------------------------------------------------------------------
    def _overview(self) -> tuple[dict, pl.DataFrame | None]:
        if not self.path.exists():
            return {}, None
        from .auditor.views import run_summary

        with self._connect(read_only=True) as con:
            counts = con.split_counts() if con.table_exists(S.SAMPLES) else {}
            run = con.latest_run_id()
            summary = run_summary(con, run) if run is not None else None
        return counts, summary

    def __repr__(self) -> str:
        counts, summary = self._overview()
        if not self.path.exists():
            return f"datacure.Store({str(self.path)!r}): no store yet (ingest creates it)"
        splits = ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "no samples"
        lines = [f"datacure.Store({str(self.path)!r}): {splits}"]
        if summary is not None:
            ok = summary.filter(summary["status"] == "ok")
            flagged = ", ".join(f"{a} {n}" for a, n in zip(ok["auditor"], ok["num_issues"]))
            lines.append(f"  latest audit: {flagged or 'nothing ran'}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        counts, summary = self._overview()
        title = f"<b>datacure.Store</b> <code>{html.escape(str(self.path))}</code>"
        if not self.path.exists():
            return f"<div>{title}: no store yet (ingest creates it)</div>"
        splits = ", ".join(f"{html.escape(str(k))}: {v:,}" for k, v in counts.items())
        table = _html_table(summary) if summary is not None else "<p>no audit run yet</p>"
        return f"<div>{title}<p>{splits or 'no samples'}</p>{table}</div>"


class AuditRun:
    """One audit run of a store: its per-auditor summary and its flagged rows."""

    def __init__(self, store: Store, run_id: int, report: RunReport | None = None):
        self.store = store
        self.run_id = run_id
        self.report = report  # the runner's report when this object made the run

    def summary(self) -> pl.DataFrame:
        """One row per auditor: status, num_issues, num_rows, share, score, reason."""
        from .auditor.views import run_summary

        with self.store._connect(read_only=True) as con:
            return run_summary(con, self.run_id)

    def issues(
        self, auditor: str | None = None, top: int | None = 20, flagged_only: bool = True
    ) -> pl.DataFrame:
        """Rows of this run, worst first: row_id, score, each details field as a column, and the
        row's own columns (`top=None`: all)."""
        from .auditor.views import issue_rows

        with self.store._connect(read_only=True) as con:
            return issue_rows(con, auditor, top=top, run_id=self.run_id, flagged_only=flagged_only)

    def info(self, auditor: str) -> dict:
        """The dataset-level findings of one auditor (`issue_summary.info`)."""
        import json

        rows = self.store.sql(
            f"SELECT info::VARCHAR AS info FROM {S.ISSUE_SUMMARY} "
            f"WHERE run_id = {int(self.run_id)} AND auditor = '{auditor.replace(chr(39), '')}'"
        )
        if rows.is_empty():
            raise InputError(
                f"auditor {auditor!r} has no result in run {self.run_id}",
                "see run.summary() for the auditors that ran",
            )
        return json.loads(rows["info"][0] or "{}")

    def breached(self, fail_on: dict[str, float]) -> list[str]:
        """Auditors whose flagged share exceeds its threshold (as `audit --fail-on`)."""
        from .auditor.runner import check_gates

        rows = self.summary().select("auditor", "status", "share", "reason").rows()
        return check_gates(rows, fail_on)

    def __repr__(self) -> str:
        s = self.summary()
        lines = [f"datacure.AuditRun {self.run_id} of {self.store.path}"]
        for r in s.iter_rows(named=True):
            if r["status"] == "ok":
                lines.append(
                    f"  {r['auditor']:<20} {r['num_issues']:>8,} flagged "
                    f"({(r['share'] or 0):.2%})  score {r['score']:.3f}"
                )
            else:
                lines.append(f"  {r['auditor']:<20} skipped: {r['reason']}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        title = (
            f"<b>datacure.AuditRun {self.run_id}</b> of "
            f"<code>{html.escape(str(self.store.path))}</code>"
        )
        return f"<div>{title}{_html_table(self.summary(), max_rows=50)}</div>"


class RepairPlan:
    """A repair plan: the edits one `repair` call planned, and their effect."""

    def __init__(self, store: Store, report: RepairReport):
        self.store = store
        self.report = report
        self.plan_id = report.plan_id

    def summary(self) -> str:
        return self.report.summary()

    def edits(self, top: int = 50) -> pl.DataFrame:
        return self.store.edits(top=top)

    def __repr__(self) -> str:
        return self.report.summary()

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.report.summary())}</pre>"
