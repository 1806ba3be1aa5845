"""The auditor contract: one small class per check, behind one registry.

An auditor declares its `name` (the registry key, the CLI name and the `auditor` value of its
rows in `issues`), its parameters as a pydantic model, and what it `requires`. The runner skips
an auditor whose requirements are missing and records why. `audit(ctx)` returns an `AuditResult`
and writes nothing: only the runner writes to the store.

The score convention is checked in one place (`validate_result`): one row per audited sample,
`score` in [0, 1] with lower meaning more severe, a boolean `is_issue`, a dataset-level score in
[0, 1], and a JSON-serialisable `info`.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, ValidationError

from ..store import schema as S
from ..store.errors import InputError, invalid_value

if TYPE_CHECKING:
    import pyarrow as pa

    from .context import AuditContext


class Requires(str, Enum):
    """Inputs an auditor can need. The context says which are available."""

    LABELS = "labels"  # at least two classes among the audited rows
    EMBEDDINGS = "embeddings"  # an embedding covering the audited rows
    PRED_PROBS = "pred_probs"  # out-of-sample predicted probabilities (derived from the above)
    SPLITS = "splits"  # at least two splits in the store
    REFERENCE = "reference"  # the reference split exists and is not the only split
    TEXT = "text"  # a text column
    IMAGES = "images"  # an image column
    METADATA = "metadata"  # source columns besides text, image and label


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Params(BaseModel):
    """Base for auditor parameters: unknown keys are an error, so typos are caught."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class AuditResult:
    """What an auditor found.

    rows: one row per audited sample with `row_id`, `is_issue` (bool), `score` (float in [0, 1],
        lower is worse), and any extra columns, which the runner stores as the `details` JSON of
        each row (a column named `details` holding dicts is merged in as is).
    score: dataset-level score in [0, 1], lower is worse.
    info: JSON-serialisable summary, stored in `issue_summary.info`.
    slices: optional groups for the `slices` table: dicts with `slice_id`, `description`,
        `members` (row ids), `error_rate`, and an optional `info` dict.
    """

    rows: Any
    score: float
    info: dict = field(default_factory=dict)
    slices: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.rows, pl.DataFrame):
            return
        if isinstance(self.rows, dict):
            self.rows = pl.DataFrame(self.rows)
        elif hasattr(self.rows, "to_arrow") or type(self.rows).__module__.startswith("pandas"):
            self.rows = (
                pl.from_pandas(self.rows)
                if hasattr(self.rows, "iloc")
                else pl.from_arrow(self.rows.to_arrow())
            )
        else:
            self.rows = pl.from_arrow(self.rows)

    @property
    def num_issues(self) -> int:
        return int(self.rows["is_issue"].sum()) if len(self.rows) else 0


ROW, FINDING = "row", "finding"

# What `datacure repair` can do with an auditor's flagged rows.
DROP, RELABEL, KEEP_ONE, NO_REPAIR = "drop", "relabel", "keep_one_of_set", "none"


def _never(policy: Any) -> bool:
    return False


@dataclass(frozen=True)
class RepairAction:
    """An auditor's repair, declared once and read by plan and review (never by name).

    action: `drop` the flagged row (with `set_key`: every row of its set in the splits a plan
        drops from, as leakage does), `relabel` it to `details[suggestion_key]` when
        `details[probability_key]` clears the policy's threshold, `keep_one_of_set` (drop all
        but one row of each set formed by `set_key`), or `none`.
    planned: whether `datacure repair` plans it under a policy (a RepairPolicy); when it does
        not, review still drops an accepted flag of a `drop` auditor.
    evidence: `details` keys copied into the edit, with their DuckDB type (`FIRST DOUBLE`: a
        number, or the first of a list of numbers).
    priority: when several auditors drop one row, the lowest priority names the edit.
    keeps_content: a drop that leaves a copy of the content in its cell (exact duplicates): not
        counted against the plan's cell-drop cap.
    """

    action: str = NO_REPAIR
    planned: Callable[[Any], bool] = _never
    set_key: str | None = None  # `details` key listing the other rows of the flagged row's set
    evidence: dict = field(default_factory=dict)
    suggestion_key: str = "suggested_label"
    probability_key: str = "suggested_label_prob"
    priority: int = 100
    keeps_content: bool = False


@dataclass(frozen=True)
class ReportSection:
    """How the report (and the app) shows an auditor beyond its counts and worst rows.

    view: a view of report/views.py (`VIEWS`) drawn from the auditor's `info`.
    own_section: (anchor, title) of a section of its own, shown (as "not run") even when the
        auditor did not run.
    info_keys: the `info` keys worth showing first (the rest stay in the folded JSON).
    """

    view: str | None = None
    own_section: tuple[str, str] | None = None
    info_keys: tuple[str, ...] = ()


class Auditor(ABC):
    """Base class of every check. Subclasses set `name`, `requires`, `Params`, `description`,
    and `kind`:

    - `row` (a row check): a flag means "this row needs a decision" (a wrong label, a copy, a
      leak, contamination, missing content, an outlier), on a threshold calibrated on the
      data's own statistics;
    - `finding`: the result is a dataset-level fact with evidence in `info` (a spurious cue or
      attribute, a slice, drift, imbalance, non-IID order); rows are flagged only where a row
      itself needs action and the finding is practically significant. The report's headline
      counts the flags of row checks only."""

    name: ClassVar[str]
    kind: ClassVar[str] = ROW
    description: ClassVar[str] = ""
    requires: ClassVar[frozenset[Requires]] = frozenset()
    Params: ClassVar[type[BaseModel]] = NoParams
    # The `details` field that lists the other rows of the store a flag is about (a duplicate
    # set's members, leakage partners): views show them side by side with the flagged row.
    partner_key: ClassVar[str | None] = None
    # The `details` columns its result rows carry, as a polars schema ({name: dtype}), checked by
    # `validate_result`; any auditor with a repair declares the keys its repair reads.
    details: ClassVar[dict[str, Any] | None] = None
    # What repair does with a flag and how the report shows the auditor (see the classes).
    repair: ClassVar[RepairAction] = RepairAction()
    report: ClassVar[ReportSection] = ReportSection()

    def __init__(self, **params: Any):
        try:
            self.params = self.Params(**params)
        except ValidationError as exc:
            raise invalid_value(
                exc,
                f"bad parameter for auditor {self.name!r}: ",
                f"valid parameters: {', '.join(self.Params.model_fields) or 'none'}",
            ) from None

    def config(self) -> dict:
        """Plain-data config that round-trips: `{"auditor": name, **params}`."""
        return {"auditor": self.name, **self.params.model_dump(mode="json")}

    def fingerprint(self) -> str:
        blob = json.dumps(self.config(), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:16]

    def skip_reason(self, ctx: AuditContext) -> str | None:
        """Why this auditor cannot run on `ctx` beyond its declared `requires` (None: it can)."""
        return None

    @abstractmethod
    def audit(self, ctx: AuditContext) -> AuditResult:
        """Examine the context and return results; never write to the store."""


REGISTRY: dict[str, type[Auditor]] = {}


def register(cls: type[Auditor]) -> type[Auditor]:
    """Class decorator adding an auditor to the registry. A duplicate name is an error."""
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls.__name__} must set a string `name` to be registered")
    if not name.replace("_", "a").isalnum() or not name.isascii():
        raise ValueError(
            f"auditor name {name!r}: letters, digits and _ only (it keys SQL and URLs)"
        )
    _check_declarations(cls)
    if name in REGISTRY and REGISTRY[name] is not cls:
        raise ValueError(f"an auditor named {name!r} is already registered ({REGISTRY[name]})")
    REGISTRY[name] = cls
    return cls


def _check_declarations(cls: type[Auditor]) -> None:
    """A repair reads `details` keys: they must be declared in `details`, so renaming a column
    fails here instead of silently turning a repair off."""
    rep = cls.repair
    if rep.action == NO_REPAIR:
        return
    read = set(rep.evidence) | ({rep.set_key} if rep.set_key else set())
    if rep.action == RELABEL:
        read |= {rep.suggestion_key, rep.probability_key}
    if cls.details is None:
        raise TypeError(f"auditor {cls.name!r} declares a {rep.action} repair but no `details`")
    missing = sorted(read - set(cls.details))
    if missing:
        raise TypeError(
            f"auditor {cls.name!r}: its repair reads details {missing} that `details` lacks"
        )


def get_auditor(name: str) -> type[Auditor]:
    from . import load_builtin

    load_builtin()
    if name not in REGISTRY:
        raise InputError(f"unknown auditor {name!r}", f"choose from: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def _json_safe(obj: Any) -> Any:
    """Round numpy scalars/arrays to plain Python so `info` stores as JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _check_details(name: str, rows: pl.DataFrame) -> None:
    """The declared `details` columns are there and hold values of the declared type."""
    cls = REGISTRY.get(name)
    for col, dtype in ((cls.details or {}) if cls is not None else {}).items():
        if col not in rows.columns:
            raise ValueError(f"auditor {name!r}: result rows lack the declared details {col!r}")
        try:
            rows[col].cast(dtype, strict=True)
        except (pl.exceptions.PolarsError, TypeError, ValueError):
            raise ValueError(
                f"auditor {name!r}: details {col!r} holds {rows[col].dtype}, declared {dtype}"
            ) from None


def validate_result(name: str, result: AuditResult, row_ids: np.ndarray | None) -> AuditResult:
    """Check the score convention in one place; raises ValueError naming the bad value."""
    rows = result.rows
    for col in (S.ROW_ID, "is_issue", "score"):
        if col not in rows.columns:
            raise ValueError(f"auditor {name!r}: result rows lack the column {col!r}")
    if rows[S.ROW_ID].n_unique() != len(rows):
        raise ValueError(f"auditor {name!r}: result has more than one row per row_id")
    if row_ids is not None and len(rows):
        extra = set(rows[S.ROW_ID].to_list()) - set(np.asarray(row_ids).tolist())
        if extra:
            raise ValueError(f"auditor {name!r}: rows for unknown row_ids {sorted(extra)[:5]}")
    score = rows["score"].cast(pl.Float64)
    if score.is_null().any() or score.is_nan().any():
        raise ValueError(f"auditor {name!r}: score has null or NaN values")
    if len(score) and (score.min() < 0 or score.max() > 1):
        raise ValueError(
            f"auditor {name!r}: score outside [0, 1] (min {score.min()}, max {score.max()})"
        )
    if rows["is_issue"].dtype != pl.Boolean:
        raise ValueError(
            f"auditor {name!r}: is_issue must be boolean, got {rows['is_issue'].dtype}"
        )
    _check_details(name, rows)
    s = float(result.score)
    if not (0.0 <= s <= 1.0) or math.isnan(s):
        raise ValueError(f"auditor {name!r}: dataset score {s} is outside [0, 1]")
    result.score = s
    result.info = _json_safe(result.info)
    json.dumps(result.info)  # raises TypeError naming the bad object
    for sl in result.slices:
        sl["members"] = [int(m) for m in sl["members"]]
        sl["info"] = _json_safe(sl.get("info", {}))
    return result


# --- results as `issues` stores them -------------------------------------------------------------
def result_table(rows: pl.DataFrame) -> pa.Table:
    """`rows` (row_id, is_issue, score, extra columns, optional `details` dicts) in the form
    `issues` is written from (the runner's `_write_result`, the Ray engine's result files): extra
    columns in one struct `_extra`, `details` as JSON."""
    extra = [c for c in rows.columns if c not in (S.ROW_ID, "is_issue", "score", "details")]
    if extra:
        rows = rows.with_columns(pl.struct(extra).alias("_extra"))
    base = rows.select(
        pl.col(S.ROW_ID).cast(pl.Int64),
        pl.col("is_issue").cast(pl.Boolean),
        pl.col("score").cast(pl.Float64),
        *([pl.col("_extra")] if extra else []),
        *(
            [pl.col("details").map_elements(json.dumps, return_dtype=pl.Utf8)]
            if "details" in rows.columns
            else []
        ),
    )
    return base.to_arrow()


def details_sql(columns: list[str]) -> str:
    """The `details` JSON of `issues` from a `result_table` with these columns: the extra
    columns and the auditor's own details, merged."""
    extra, det = "_extra" in columns, "details" in columns
    if extra and det:
        return "json_merge_patch(to_json(_extra), details::JSON)"
    if extra:
        return "to_json(_extra)"
    if det:
        return "details::JSON"
    return "NULL::JSON"
