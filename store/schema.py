"""Table and column names of the store, in one place.

Every module that reads or writes the store takes its names from here, so a rename is one edit
and the README's table documentation has one source to check against.
"""

from __future__ import annotations

import re

# --- samples ---------------------------------------------------------------------------------
SAMPLES = "samples"
ROW_ID = "row_id"
SPLIT = "split"
LABEL = "label"
# Absolute path of the image file, resolved at ingest from the user's relative `--image` column.
IMAGE_PATH = "image_path"
# Columns datacure adds to `samples`; a source column with one of these names (other than the one
# used for that role) is kept under `<name>_source`.
RESERVED = (ROW_ID, SPLIT, LABEL, IMAGE_PATH)
# Hash of the source columns of a row: lets a re-ingest keep the row_id of an unchanged row.
CONTENT_HASH = "_content_hash"
# Columns a datacure export adds to every row (repair/export.py). An export ingested again
# keeps them as source columns; the auditors treat them as datacure's own (never metadata, never
# a user's nulls), and rows sharing `datacure_row_id` are recorded copies of one row (an
# oversampled row), not duplicates.
EXPORT_COLUMNS = (
    "synthetic",
    "synthetic_parent",
    "synthetic_generator",
    "synthetic_backend",
    "synthetic_model",
    "synthetic_prompt",
    "synthetic_seed",
    "datacure_row_id",
)
COPY_OF = "datacure_row_id"

# --- bookkeeping ---------------------------------------------------------------------------------
META = "meta"  # key VARCHAR PRIMARY KEY, value JSON: project-wide settings
# meta key of the DataDefinition (store/datadef.py): role and type of every column of samples
DATA_DEFINITION = "data_definition"
COLUMNS = "columns"  # view over the DataDefinition: name, role, type, dtype, source
SOURCES = "sources"  # one row per ingested split: where it came from and how it was read
EMBEDDINGS = "embeddings"  # registry of embedding tables: key, model, column, dim, ...
EMBEDDING_PREFIX = "embeddings_"  # embeddings_<key>(row_id, vector FLOAT[d])
KNN_GRAPHS = "knn_graphs"  # registry of cached kNN graphs: key, embedding, k, metric, scope ...
KNN_PREFIX = "knn_"  # knn_<key>(row_id, neighbors BIGINT[k], distances FLOAT[k])

# --- audit results -------------------------------------------------------------------------------
PREDICTIONS = "predictions"  # row_id, fingerprint, model, classes JSON, pred_probs FLOAT[]
RUNS = "runs"  # run_id, started_at, finished_at, auditors JSON, config JSON, version, status
ISSUES = "issues"  # run_id, auditor, row_id, is_issue, score, details JSON
ISSUE_SUMMARY = "issue_summary"  # run_id, auditor, score, num_issues, info JSON
SKIPPED = "skipped_auditors"  # run_id, auditor, reason
SLICES = "slices"  # run_id, slice_id, auditor, description, size, error_rate, members, info
# contamination's benchmark vectors (a file's items, long items' chunks), embedded once:
BENCHMARK_CACHE = "benchmark_cache"  # key, source, embedding, items, vectors, info, created_at
BENCHMARK_VECTORS = "benchmark_vectors"  # key, seq, item, vector FLOAT[]

# --- repair --------------------------------------------------------------------------------------
EDITS = "edits"  # edit_id, run_id, row_id, action, new_label, reason, auditor, status, details
REVIEWS = "reviews"  # row_id, auditor, decision, new_label, decided_at, note
GENERATED = "generated"  # gen_id, row_id, parent_row_id, split, label, text, image_path, ...
# vocabulary of `edits` (repair/policy.py names them DROP, RELABEL, ADD, OVERSAMPLE, GENERATED):
# its actions, and `details.kind` of an `add` edit: a copy of an existing row or a generated row
EDIT_DROP, EDIT_RELABEL, EDIT_ADD = "drop", "relabel", "add"
ADD_OVERSAMPLE, ADD_GENERATED = "oversample", "generated"

_KEY_RE = re.compile(r"[^a-z0-9]+")


def sanitize_key(*parts: str) -> str:
    """Turn a model name and column into a lower-case identifier safe for a table name."""
    key = "_".join(_KEY_RE.sub("_", str(p).lower()).strip("_") for p in parts if p)
    return key[:60] or "default"


def embedding_table(key: str) -> str:
    return f"{EMBEDDING_PREFIX}{key}"


def knn_table(key: str) -> str:
    return f"{KNN_PREFIX}{key}"


def quote(name: str) -> str:
    """Quote an identifier for DuckDB SQL (source column names can be anything)."""
    return '"' + str(name).replace('"', '""') + '"'


DDL = f"""
CREATE TABLE IF NOT EXISTS {META} (key VARCHAR PRIMARY KEY, value JSON);
CREATE VIEW IF NOT EXISTS {COLUMNS} AS SELECT c.name, c.role, c.type, c.dtype, c.source FROM (
    SELECT unnest(from_json(value -> '$.columns', '[{{"name": "VARCHAR", "role": "VARCHAR",
    "type": "VARCHAR", "dtype": "VARCHAR", "source": "VARCHAR"}}]')) AS c
    FROM {META} WHERE key = '{DATA_DEFINITION}'
);
CREATE TABLE IF NOT EXISTS {SOURCES} (
    split VARCHAR PRIMARY KEY, source VARCHAR, format VARCHAR, label_column VARCHAR,
    text_column VARCHAR, image_column VARCHAR, image_root VARCHAR, vector_column VARCHAR,
    num_rows BIGINT, ingested_at TIMESTAMP, options JSON
);
CREATE TABLE IF NOT EXISTS {EMBEDDINGS} (
    key VARCHAR PRIMARY KEY, model VARCHAR, column_name VARCHAR, dim INTEGER,
    normalized BOOLEAN, kind VARCHAR, created_at TIMESTAMP, info JSON
);
CREATE TABLE IF NOT EXISTS {KNN_GRAPHS} (
    key VARCHAR PRIMARY KEY, embedding VARCHAR, k INTEGER, metric VARCHAR, scope VARCHAR,
    num_rows BIGINT, index_kind VARCHAR, recall DOUBLE, seconds DOUBLE, created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS {PREDICTIONS} (
    row_id BIGINT, fingerprint VARCHAR, model VARCHAR, classes JSON, pred_probs FLOAT[],
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS {RUNS} (
    run_id INTEGER PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP, auditors JSON,
    config JSON, version VARCHAR, status VARCHAR
);
CREATE TABLE IF NOT EXISTS {ISSUES} (
    run_id INTEGER, auditor VARCHAR, row_id BIGINT, is_issue BOOLEAN, score DOUBLE, details JSON
);
CREATE TABLE IF NOT EXISTS {ISSUE_SUMMARY} (
    run_id INTEGER, auditor VARCHAR, score DOUBLE, num_issues BIGINT, info JSON
);
CREATE TABLE IF NOT EXISTS {SKIPPED} (run_id INTEGER, auditor VARCHAR, reason VARCHAR);
CREATE TABLE IF NOT EXISTS {SLICES} (
    run_id INTEGER, slice_id VARCHAR, auditor VARCHAR, description VARCHAR, size BIGINT,
    error_rate DOUBLE, members BIGINT[], info JSON
);
CREATE TABLE IF NOT EXISTS {EDITS} (
    edit_id INTEGER, run_id INTEGER, row_id BIGINT, action VARCHAR, new_label VARCHAR,
    reason VARCHAR, auditor VARCHAR, status VARCHAR, details JSON, created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS {REVIEWS} (
    row_id BIGINT, auditor VARCHAR, decision VARCHAR, new_label VARCHAR, decided_at TIMESTAMP,
    note VARCHAR
);
CREATE TABLE IF NOT EXISTS {GENERATED} (
    gen_id BIGINT, row_id BIGINT, parent_row_id BIGINT, split VARCHAR, label VARCHAR,
    text VARCHAR, image_path VARCHAR, generator VARCHAR, backend VARCHAR, model VARCHAR,
    prompt VARCHAR, seed BIGINT, verified BOOLEAN, verify_score DOUBLE, group_key VARCHAR,
    created_at TIMESTAMP, details JSON
);
"""
