"""Run auditors on a store: build the context once, run each auditor, write results atomically.

Only the runner writes audit results. `runs`, `issues`, `issue_summary`, `skipped_auditors` and
`slices` for one run are written in a single transaction with the context's caches, so an audit
that fails (or is killed) leaves the store exactly as it was.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np

from ..store import Store
from ..store import schema as S
from ..store.errors import DatacureError, InputError
from . import load_builtin
from .base import (
    REGISTRY,
    AuditResult,
    details_sql,
    get_auditor,
    result_table,
    validate_result,
)
from .context import AuditContext

# What `datacure audit` runs when no --auditors are given: everything registered.
CORE_ORDER = (
    "label",
    "outlier",
    "exact_duplicate",
    "near_duplicate",
    "non_iid",
    "class_imbalance",
    "null",
)


def tool_version() -> str:
    try:
        return metadata.version("datacure")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0+unknown"


@dataclass
class AuditorOutcome:
    name: str
    status: str  # "ok" | "skipped"
    reason: str | None = None
    num_issues: int = 0
    num_rows: int = 0
    score: float | None = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.num_issues / self.num_rows if self.num_rows else 0.0


@dataclass
class RunReport:
    run_id: int
    outcomes: list[AuditorOutcome]
    seconds: float

    def breached(self, fail_on: dict[str, float]) -> list[str]:
        """Auditors whose flagged share exceeds its --fail-on threshold (see `check_gates`)."""
        return check_gates([(o.name, o.status, o.share, o.reason) for o in self.outcomes], fail_on)


def check_gate_names(fail_on: dict[str, float]) -> None:
    """Refuse a gate on a name that is no auditor, before any work (a typo gets a suggestion)."""
    known = default_auditors()
    for name in fail_on:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InputError(
                f"--fail-on names {name!r}, which is not an auditor{hint}",
                f"use one of: {', '.join(known)}",
            )


def check_gates(outcomes, fail_on: dict[str, float]) -> list[str]:
    """Gates fail closed. `outcomes` holds (auditor, status, share, reason) per auditor of a run.
    A gate on an auditor that is unknown, did not run, or was skipped raises InputError (exit
    2: a gate never passes without checking); otherwise the list of breached gates."""
    check_gate_names(fail_on)
    by = {name: (status, share, reason) for name, status, share, reason in outcomes}
    out = []
    for name, frac in fail_on.items():
        if name not in by:
            raise InputError(
                f"--fail-on {name}: the auditor did not run in this audit",
                f"add it to --auditors (ran: {', '.join(by) or 'none'}), or drop the gate",
            )
        status, share, reason = by[name]
        if status != "ok":
            raise InputError(
                f"--fail-on {name}: the auditor was skipped ({reason}), so the gate checked "
                "nothing",
                "give the auditor what it needs (e.g. `datacure embed` first) and audit again",
            )
        if share > frac:
            out.append(f"{name}: {share:.2%} flagged > {frac:.2%}")
    return out


def parse_config(config: dict | list | None) -> dict[str, dict]:
    """Accept `{"auditors": [{"auditor": name, **params}, ...]}`, a list of such dicts, or
    `{name: params}`; return `{name: params}`."""
    if not config:
        return {}
    items = config.get("auditors", config) if isinstance(config, dict) else config
    if isinstance(items, dict):
        return {str(k): dict(v or {}) for k, v in items.items()}
    out = {}
    for item in items:
        if not isinstance(item, dict) or "auditor" not in item:
            raise InputError(
                f"bad audit config entry {item!r}",
                'write each entry as {"auditor": NAME, PARAM: VALUE, ...}',
            )
        item = dict(item)
        out[item.pop("auditor")] = item
    return out


def default_auditors() -> list[str]:
    load_builtin()
    names = [n for n in CORE_ORDER if n in REGISTRY]
    return names + sorted(n for n in REGISTRY if n not in names)


def run_audit(
    store: Store,
    auditors: list[str] | None = None,
    config: dict | list | None = None,
    splits: list[str] | None = None,
    reference: str | None = None,
    embedding: str | None = None,
    k: int = 10,
    seed: int = 0,
    pred_probs: str | np.ndarray | None = None,
    progress=None,
    context_options: dict | None = None,
) -> RunReport:
    """Run the named auditors (default: all registered) and record one run in the store."""
    t_run = time.perf_counter()
    params = parse_config(config)
    names = list(auditors) if auditors else default_auditors()
    names += [n for n in params if n not in names and auditors is None]
    instances = [get_auditor(n)(**params.get(n, {})) for n in names]
    ctx = AuditContext(
        store,
        splits=splits,
        reference=reference,
        embedding=embedding,
        k=k,
        seed=seed,
        pred_probs=pred_probs,
        options=context_options,
    )
    if pred_probs is not None:
        ctx.pred_probs  # noqa: B018 - a bad file the user named is an input error, not a skip
    with store.transaction():
        outcomes, results = _run_auditors(ctx, instances, progress)
        run_id = record_run(store, instances, _run_settings(ctx), t_run)
        for name, res in results:
            _write_result(store, run_id, name, res)
        for o in outcomes:
            if o.status == "skipped":
                store.execute(
                    f"INSERT INTO {S.SKIPPED} VALUES (?, ?, ?)", [run_id, o.name, o.reason]
                )
    return RunReport(run_id, outcomes, time.perf_counter() - t_run)


def _run_auditors(ctx: AuditContext, instances: list, progress) -> tuple[list, list]:
    """Run each auditor that can run on the context: (outcome of each, (name, validated
    result) of those that ran). One that lacks an input, or raises a DatacureError, is skipped
    with the reason."""
    outcomes: list[AuditorOutcome] = []
    results: list[tuple[str, AuditResult]] = []
    for aud in instances:
        if progress:
            progress(f"auditing: {aud.name}")
        reason = ctx.missing(aud.requires) or aud.skip_reason(ctx)
        if reason:
            outcomes.append(AuditorOutcome(aud.name, "skipped", reason))
            continue
        t0 = time.perf_counter()
        try:
            res = aud.audit(ctx)
        except DatacureError as exc:
            outcomes.append(AuditorOutcome(aud.name, "skipped", exc.problem))
            continue
        res = validate_result(aud.name, res, None)
        outcomes.append(
            AuditorOutcome(
                aud.name,
                "ok",
                num_issues=res.num_issues,
                num_rows=len(res.rows),
                score=res.score,
                seconds=time.perf_counter() - t0,
                info=res.info,
            )
        )
        results.append((aud.name, res))
    return outcomes, results


def _run_settings(ctx: AuditContext) -> dict:
    """The context's settings as the run records them (a pred_probs array by its shape)."""
    pred_probs = ctx.pred_probs_source
    return {
        "splits": ctx.splits,
        "reference": ctx.reference,
        "embedding": ctx.embedding_key,
        "k": ctx.k,
        "seed": ctx.seed,
        "pred_probs": pred_probs
        if pred_probs is None or isinstance(pred_probs, str)
        else f"<array {np.shape(pred_probs)}>",
    }


def record_run(store: Store, instances: list, settings: dict, t_run: float) -> int:
    """Insert one run's row: its auditors' configs and fingerprints, the run's `settings` and
    its duration since `t_run` (perf_counter). Returns the new run id."""
    run_id = int(store.scalar(f"SELECT coalesce(max(run_id), 0) + 1 FROM {S.RUNS}"))
    store.execute(
        f"INSERT INTO {S.RUNS} "
        "VALUES (?, now() - to_microseconds(?::BIGINT), now(), ?, ?, ?, 'ok')",
        [
            run_id,
            int((time.perf_counter() - t_run) * 1e6),
            json.dumps([a.config() | {"fingerprint": a.fingerprint()} for a in instances]),
            json.dumps(settings),
            tool_version(),
        ],
    )
    return run_id


def _write_result(store: Store, run_id: int, name: str, res: AuditResult) -> None:
    table = result_table(res.rows)
    with store.registered("_dc_rows", table):
        det = details_sql(table.column_names)
        store.execute(
            f"INSERT INTO {S.ISSUES} SELECT ?, ?, row_id, is_issue, score, {det} FROM _dc_rows",
            [run_id, name],
        )
    store.execute(
        f"INSERT INTO {S.ISSUE_SUMMARY} VALUES (?, ?, ?, ?, ?)",
        [run_id, name, res.score, res.num_issues, json.dumps(res.info)],
    )
    for sl in res.slices:
        store.execute(
            f"INSERT INTO {S.SLICES} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                str(sl["slice_id"]),
                name,
                sl.get("description", ""),
                len(sl["members"]),
                float(sl.get("error_rate", np.nan)),
                sl["members"],
                json.dumps(sl.get("info", {})),
            ],
        )
