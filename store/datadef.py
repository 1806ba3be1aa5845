"""One description of the data: the role and type of every column of `samples`.

Ingest writes a `DataDefinition` (Evidently's idea: one typed description, written once, read
everywhere) into `meta` under `data_definition`, and SQL users see it as the view `columns`
(`name, role, type, dtype, source`). Auditors (through `AuditContext`), export, drift, leakage,
the spurious-attribute pickers and the report read it; none re-derives roles from other keys.

Roles (`ROLES`): `id` (`row_id`), `split` (datacure's `split` and the source column it came from,
`--split-column`), `label` (datacure's `label` and the source column the labels came from),
`text`, `image` (the user's image column), `image_path` (the resolved absolute path datacure
adds), `vector` (a `--vector` column: it lives in `embeddings_user_<col>`, not in `samples`),
`export` (the provenance columns of a re-ingested
datacure export), `internal` (datacure's bookkeeping, `_content_hash`), `ignored` (a source
column named `_...`: kept, never a feature) and `metadata` (every other source column: the
features drift, leakage, slices and the spurious pickers test).

Types (`TYPES`): numeric, categorical, text, image, datetime, boolean, vector, identifier (a
mostly distinct one-word string, a mostly distinct integer named like an id, a row index), nested
(lists, structs, maps) and binary. Types come from the DuckDB type and, for strings and numbers,
from the column's own statistics over the whole table (distinct values, words per value): the
rules are above `ColumnDefinition`. This is the only place a column is classified: drift,
spurious, slices and the rest read `type` and never look at a dtype again.

A store written before the definition existed gets one derived from its old `meta` keys
(`text_column`, `label_source_columns`, ...): `load` derives it on the fly, and opening the store
for writing saves it (`migrate`). `save` keeps writing those keys, derived from the definition,
for scripts that read them (the README documents them); nothing in datacure reads them.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from . import schema as S

Role = Literal[
    "id",
    "split",
    "label",
    "text",
    "image",
    "image_path",
    "vector",
    "export",
    "internal",
    "ignored",
    "metadata",
]
ColumnType = Literal[
    "numeric",
    "categorical",
    "text",
    "image",
    "datetime",
    "boolean",
    "vector",
    "identifier",
    "nested",
    "binary",
]
ROLES: tuple[str, ...] = Role.__args__
TYPES: tuple[str, ...] = ColumnType.__args__
# the types a metadata column must have to be a feature (tested by drift, leakage, slices, ...)
FEATURE_TYPES = frozenset(TYPES) - {"nested", "binary", "vector", "image"}
# roles a user may give a source column by editing the definition; a re-ingest keeps them
USER_ROLES = frozenset({"metadata", "ignored", "internal"})

# Type rules from a column's own statistics over the whole table (exact distinct counts), applied
# once it has at least MIN_ROWS values (a smaller column keeps its DuckDB type's reading):
# - a number (integer or float) with at most FEW_LEVELS distinct values is a code: categorical
#   (AG News' `gt` class code, a 0/1 `sex`; Evidently tests such columns as categorical too);
# - an integer named like an id is `identifier` when at least DISTINCT_SHARE of its values are
#   distinct, else a group key (categorical); an integer that is all distinct and runs without
#   gaps (a row index, MNLI's `index`) is `identifier` whatever its name;
# - a string averaging at least TEXT_WORDS words is `text` when at least DISTINCT_SHARE of its
#   values are distinct or it has more than MANY_LEVELS of them (MNLI's `premise`, each repeated
#   about 3 times); a string at least DISTINCT_SHARE distinct is `text` when it averages at least
#   2 words (titles, names), else `identifier` (codes, file names, hashes, long-string ids);
#   any other string is categorical.
TEXT_WORDS = 3.0
DISTINCT_SHARE = 0.5
FEW_LEVELS = 10
MANY_LEVELS = 100
MIN_ROWS = 20
_ID_NAME = re.compile(r"(^|_)(id|uid|uuid|key)$|Id$|ID$")


class ColumnDefinition(BaseModel):
    """One column of `samples`: its role, its type, its DuckDB type, and its name in the user's
    source (None for a column datacure added)."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: Role
    type: ColumnType
    dtype: str
    source: str | None = None


class DataDefinition(BaseModel):
    """Every column of `samples` with its role and type, plus the dataset-level roles.

    `text_column` / `image_column`: the content column (one modality per store);
    `label_column`: the stored column the labels came from (`label`, or the user's own column
    such as `category`, copied into datacure's `label`)."""

    model_config = ConfigDict(frozen=True)

    version: int = 1
    columns: tuple[ColumnDefinition, ...] = ()
    text_column: str | None = None
    image_column: str | None = None
    label_column: str | None = None

    # --- lookups ----------------------------------------------------------------------------
    def column(self, name: str) -> ColumnDefinition | None:
        return next((c for c in self.columns if c.name == name), None)

    def names(self, *roles: str) -> list[str]:
        """Names of the columns with one of `roles` (every column when none given)."""
        return [c.name for c in self.columns if not roles or c.role in roles]

    @property
    def modality(self) -> str | None:
        return "image" if self.image_column else "text" if self.text_column else None

    @property
    def samples_columns(self) -> list[str]:
        """The columns stored in `samples` (a `vector` column lives in its embedding table)."""
        return [c.name for c in self.columns if c.role != "vector"]

    @property
    def source_columns(self) -> list[str]:
        """Columns of `samples` that came from the user's data (not datacure's own)."""
        return [c.name for c in self.columns if c.source is not None and c.role != "vector"]

    @property
    def added_columns(self) -> list[str]:
        """Columns datacure added to `samples`."""
        return [c.name for c in self.columns if c.source is None]

    @property
    def label_sources(self) -> list[str]:
        """The user's label columns kept beside datacure's `label` (e.g. `category`)."""
        return [c.name for c in self.columns if c.role == "label" and c.name != S.LABEL]

    @property
    def split_sources(self) -> list[str]:
        """The source column(s) the split came from (`--split-column COL`), kept in samples."""
        return [c.name for c in self.columns if c.role == "split" and c.name != S.SPLIT]

    @property
    def vector_columns(self) -> list[str]:
        return self.names("vector")

    @property
    def export_columns(self) -> list[str]:
        """Provenance columns of a re-ingested datacure export (`S.EXPORT_COLUMNS`)."""
        return self.names("export")

    @property
    def features(self) -> list[str]:
        """Metadata columns of a testable type: what drift, leakage, slices and the spurious
        pickers look at."""
        return [c.name for c in self.columns if c.role == "metadata" and c.type in FEATURE_TYPES]

    @property
    def column_sources(self) -> dict[str, str]:
        """Stored name -> source name, for the columns stored under another name."""
        return {c.name: c.source for c in self.columns if c.source and c.source != c.name}

    def with_role(self, name: str, role: str, source: str | None = ...) -> DataDefinition:
        """A copy with column `name` given `role` (and `source`, when given)."""
        if self.column(name) is None:
            raise KeyError(name)
        cols = tuple(
            c.model_copy(update={"role": role, **({} if source is ... else {"source": source})})
            if c.name == name
            else c
            for c in self.columns
        )
        return self.model_copy(update={"columns": cols})


# --- building ---------------------------------------------------------------------------------
def _kind(dtype: str) -> str:
    """The type a DuckDB type gives before any statistics."""
    t = dtype.upper()
    if "[" in t or t.startswith(("STRUCT", "MAP", "UNION")):
        return "nested"
    if t in ("BLOB", "BIT") or t.startswith("BLOB"):
        return "binary"
    if t == "BOOLEAN":
        return "boolean"
    if t.startswith(("DATE", "TIME", "INTERVAL")):
        return "datetime"
    if t.startswith(("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT")) or (
        t.startswith(("USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"))
    ):
        return "integer"
    if t.startswith(("FLOAT", "DOUBLE", "DECIMAL", "REAL")):
        return "numeric"
    return "string"


def _string_type(n: int, distinct: int, words: float) -> str:
    share = distinct / n if n else 0.0
    if n < MIN_ROWS:
        return "text" if words >= TEXT_WORDS and share >= DISTINCT_SHARE else "categorical"
    if words >= TEXT_WORDS and (share >= DISTINCT_SHARE or distinct > MANY_LEVELS):
        return "text"
    if share >= DISTINCT_SHARE:
        return "text" if words >= 2.0 else "identifier"
    return "categorical"


def _number_type(name: str, integer: bool, n: int, distinct: int, span: float) -> str:
    if n < MIN_ROWS:
        return "numeric"
    if integer and _ID_NAME.search(name) is not None:
        return "identifier" if distinct >= DISTINCT_SHARE * n else "categorical"
    if integer and distinct == n and span == n - 1:
        return "identifier"  # all distinct, no gaps: a row index
    return "categorical" if distinct <= FEW_LEVELS else "numeric"


def _stat_types(store, kinds: dict[str, str]) -> dict[str, str]:
    """Types of the string and numeric columns from their statistics (the rules are above
    `ColumnDefinition`). One query with approximate distinct counts (HyperLogLog, a few percent
    off); the columns whose type could change within that error get an exact count in a second
    query (exact counts of every column cost many times more on a million rows)."""
    q = S.quote
    want = [c for c, k in kinds.items() if k in ("string", "integer", "numeric")]
    out = dict(kinds)
    if not want:
        return out
    sel = []
    for c in want:
        v = f"CAST({q(c)} AS VARCHAR)"
        sel += [f"count({q(c)})", f"approx_count_distinct({q(c)})"]
        if kinds[c] == "string":
            sel.append(f"avg(length({v}) - length(replace({v}, ' ', '')) + 1)")
        elif kinds[c] == "integer":
            sel.append(f"CAST(max({q(c)}) AS DOUBLE) - CAST(min({q(c)}) AS DOUBLE)")
        else:
            sel.append("0")
    row = store.fetchone(f"SELECT {', '.join(sel)} FROM {S.SAMPLES}")
    stats = {
        c: (row[3 * i], row[3 * i + 1] or 0, float(row[3 * i + 2] or 0)) for i, c in enumerate(want)
    }

    def rule(c: str, distinct: int) -> str:
        n, _, x = stats[c]
        if kinds[c] == "string":
            return _string_type(n, distinct, x)
        return _number_type(c, kinds[c] == "integer", n, distinct, x)

    unsure = []
    for c, (n, approx, _) in stats.items():
        band = {min(max(int(approx * f) + d, 0), n) for f, d in ((0.9, -2), (1.0, 0), (1.1, 2))}
        types = {rule(c, d) for d in band}
        if len(types) == 1:
            out[c] = types.pop()
        else:
            unsure.append(c)
    if unsure:
        exact = store.fetchone(
            "SELECT " + ", ".join(f"count(DISTINCT {q(c)})" for c in unsure) + f" FROM {S.SAMPLES}"
        )
        out |= {c: rule(c, d or 0) for c, d in zip(unsure, exact, strict=True)}
    return out


_FIXED_TYPE = {
    "id": "identifier",
    "split": "categorical",
    "label": "categorical",
    "text": "text",
    "image": "image",
    "image_path": "image",
    "vector": "vector",
    "internal": "identifier",
}


_DATACURE_ROLES = {
    S.ROW_ID: "id",
    S.SPLIT: "split",
    S.CONTENT_HASH: "internal",
    S.IMAGE_PATH: "image_path",
    S.LABEL: "label",
}


def _role(c: str, named: dict, export: set, previous: DataDefinition | None) -> str:
    """The role of column `c`: datacure's own names first, then the roles ingest was given
    (`named`: column -> role), a re-ingested export's provenance, `_` names, and a role the user
    gave it in the definition; else metadata."""
    if c in _DATACURE_ROLES:
        return _DATACURE_ROLES[c]
    if c in named:
        return named[c]
    if c in export:
        return "export"
    if c.startswith("_"):
        return "ignored"
    old = previous.column(c) if previous is not None else None
    return old.role if old is not None and old.role in USER_ROLES else "metadata"


def build(
    store,
    *,
    text_column: str | None,
    image_column: str | None,
    label_column: str | None,
    label_sources: set[str],
    split_sources: set[str],
    vectors: set[str],
    added: set[str],
    column_sources: dict[str, str],
    previous: DataDefinition | None = None,
) -> DataDefinition:
    """Describe `samples` as it is now, from the roles ingest knows. A role a user gave a
    source column by editing the definition (`USER_ROLES`) survives while the rules would make
    it plain metadata."""
    if not store.table_exists(S.SAMPLES):
        return DataDefinition()
    dtypes = dict(store.columns(S.SAMPLES))
    export = (
        set(S.EXPORT_COLUMNS) & set(dtypes) if {"synthetic", S.COPY_OF} <= set(dtypes) else set()
    )
    named = {  # later keys win: the content column, then label, split and vector sources
        **dict.fromkeys(vectors, "vector"),
        **dict.fromkeys(split_sources, "split"),
        **dict.fromkeys(label_sources, "label"),
        image_column: "image",
        text_column: "text",
    }
    roles = {c: _role(c, named, export, previous) for c in dtypes}
    free = {c: _kind(t) for c, t in dtypes.items() if roles[c] not in _FIXED_TYPE}
    types = {
        **_stat_types(store, free),
        **{c: _FIXED_TYPE[r] for c, r in roles.items() if r in _FIXED_TYPE},
    }
    cols = tuple(
        ColumnDefinition(
            name=c,
            role=roles[c],
            type=types[c],
            dtype=t,
            source=None if c in added else column_sources.get(c, c),
        )
        for c, t in dtypes.items()
    )
    dims = {e["column_name"]: e["dim"] for e in store.embedding_keys() if e.get("kind") == "user"}
    cols += tuple(
        ColumnDefinition(
            name=v, role="vector", type="vector", dtype=f"FLOAT[{dims.get(v, '')}]", source=v
        )
        for v in sorted(vectors)
        if v not in dtypes
    )
    return DataDefinition(
        columns=cols,
        text_column=text_column,
        image_column=image_column,
        label_column=label_column,
    )


def record(
    store,
    *,
    text: str | None = None,
    image: str | None = None,
    label: str | None = None,
    labelled: bool = False,
    split_source: str | None = None,
    vector: str | None = None,
    renames: dict | None = None,
) -> DataDefinition:
    """Write the definition of `samples` after an ingest: the roles the store had, plus this
    ingest's (stored names). The first content and label columns a store gets stay its own;
    `label` is a label source column even where its split is unlabelled. Returns it."""
    before = load(store)
    label_column = before.label_column or (label if labelled else None)
    label_sources = set(before.label_sources) | ({label} - {None, S.LABEL})
    split_sources = set(before.split_sources) | ({split_source} - {None, S.SPLIT})
    added = {S.ROW_ID, S.SPLIT, S.CONTENT_HASH}
    if label_column != S.LABEL:
        added.add(S.LABEL)
    if store.table_exists(S.SAMPLES) and S.IMAGE_PATH in dict(store.columns(S.SAMPLES)):
        added.add(S.IMAGE_PATH)
    definition = build(
        store,
        text_column=before.text_column or text,
        image_column=before.image_column or image,
        label_column=label_column,
        label_sources=label_sources,
        split_sources=split_sources,
        vectors=set(before.vector_columns) | ({vector} - {None}),
        added=added,
        column_sources={**before.column_sources, **{v: k for k, v in (renames or {}).items()}},
        previous=before,
    )
    save(store, definition)
    return definition


# --- reading and writing ------------------------------------------------------------------------
def from_legacy_meta(store) -> DataDefinition:
    """The definition of a store written before it existed, from its old `meta` keys."""
    get = store.meta_get
    return build(
        store,
        text_column=get("text_column"),
        image_column=get("image_column"),
        label_column=get("label_column"),
        label_sources=set(get("label_source_columns", []) or []),
        split_sources=set(get("split_source_columns", []) or []),
        vectors=set(get("vector_columns", []) or []),
        added=set(get("added_columns", [S.ROW_ID, S.SPLIT, S.CONTENT_HASH]) or []),
        column_sources=dict(get("column_sources", {}) or {}),
    )


def load(store) -> DataDefinition:
    """The store's definition: the one ingest wrote, else one derived from the old keys."""
    raw = store.meta_get(S.DATA_DEFINITION)
    if raw is not None:
        return DataDefinition.model_validate(raw)
    return from_legacy_meta(store)


def legacy_keys(definition: DataDefinition) -> dict:
    """The `meta` keys stores had before the definition (the README documents them for
    scripts), written from it: datacure itself reads only the definition."""
    d = definition
    return {
        "text_column": d.text_column,
        "image_column": d.image_column,
        "label_column": d.label_column,
        "label_source_columns": sorted(d.label_sources),
        "split_source_columns": sorted(d.split_sources),
        "vector_columns": sorted(d.vector_columns),
        "column_sources": d.column_sources,
        "added_columns": d.added_columns,
    }


def save(store, definition: DataDefinition) -> None:
    """Write the definition into `meta` (the `columns` view reads it from there), with the old
    keys derived from it."""
    store.meta_set(S.DATA_DEFINITION, json.loads(definition.model_dump_json()))
    for key, value in legacy_keys(definition).items():
        store.meta_set(key, value)


def migrate(store) -> bool:
    """Save a derived definition into a store written before definitions existed (opened for
    writing). Returns whether it did."""
    if store.meta_get(S.DATA_DEFINITION) is not None or not store.has_samples():
        return False
    save(store, from_legacy_meta(store))
    return True
