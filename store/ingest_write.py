"""Writing an ingest into the store: everything that touches it, inside the ingest's
transaction, over the staged Arrow table registered as `_dc_in`.

The steps, in order: the splits present and their clashes with the store (`_split_counts`),
labels missing in a labelled split (`_unlabelled_splits`), the rows to insert
(`_select_rows`), row ids (`_assign_row_ids`: kept for unchanged rows on replace, fresh from the
never-reused counter otherwise), `samples` created or extended and the rows inserted
(`_insert_rows`), a `--vector` column's embedding table (`_write_vectors`), and the bookkeeping
(`_record`: the DataDefinition and one `sources` row per split).
"""

from __future__ import annotations

import contextlib
import json

import duckdb
import numpy as np
import pyarrow as pa

from . import datadef
from . import schema as S
from .db import Store
from .errors import InputError
from .ingest_checks import _SHOW, _np_arrow, _rows

# Internal columns of the staged Arrow table; never stored.
_POS, _RID, _HASH, _IMG, _SPL = "__dc_pos", "__dc_rowid", "__dc_hash", "__dc_image", "__dc_split"
_INTERNAL = (_POS, _RID, _HASH, _IMG, _SPL)


def _sql_str(v: str) -> str:
    return "'" + str(v).replace("'", "''") + "'"


def _write(
    store: Store,
    tbl: pa.Table,
    src,
    report,
    *,
    split_expr: str,
    label: str | None,
    explicit_label: bool,
    no_label: bool,
    image: str | None,
    vector: str | None,
    vec_dim: int | None,
    text: str | None,
    split_column: str | None,
    renames: dict,
    source_cols: list[str],
    hash_expr: str,
    replace: bool,
) -> None:
    """Everything that touches the store; runs inside the ingest's transaction over `_dc_in`."""
    counts, clash = _split_counts(store, split_expr, split_column, replace)
    unlabelled = _unlabelled_splits(
        store, report, counts, split_expr, label, explicit_label, no_label
    )
    select = _select_rows(split_expr, label, unlabelled, set(counts), image, source_cols, renames)
    retired = _assign_row_ids(store, tbl, report, select, clash, split_expr, hash_expr)
    rid_expr = select[0].rsplit(" AS ", 1)[0]
    _insert_rows(store, report, f"SELECT {', '.join(select)} FROM _dc_in", clash, retired)
    if vector is not None:
        _write_vectors(store, src, report, vector, vec_dim, rid_expr)
    _record(
        store,
        src,
        report,
        counts=counts,
        unlabelled=unlabelled,
        replaced=bool(clash),
        stored={
            "label": renames.get(label, label) if label else None,
            "text": renames.get(text, text) if text else None,
            "image": renames.get(image, image) if image else None,
        },
        vector=vector,
        split_column=split_column,
        renames=renames,
    )


def _split_counts(
    store: Store, split_expr: str, split_column: str | None, replace: bool
) -> tuple[dict, list[str]]:
    """(rows per split of the source, splits already in the store); refuses rows without a
    split, and a split already stored unless `replace`."""
    counts = dict(
        store.fetchall(f"SELECT {split_expr} AS s, count(*) FROM _dc_in GROUP BY 1 ORDER BY 1")
    )
    if None in counts:
        n_null = counts.pop(None)
        first = [
            r[0]
            for r in store.fetchall(
                f"SELECT {_POS} FROM _dc_in WHERE {split_expr} IS NULL ORDER BY 1 LIMIT {_SHOW}"
            )
        ]
        raise InputError(
            f"split column {split_column!r} is empty in {n_null} rows (rows {_rows(first)})",
            "fill in every row's split, or pass --split NAME for the whole source",
        )
    existing = set(store.splits())
    clash = sorted(set(counts) & existing)
    if clash and not replace:
        raise InputError(
            f"split(s) {', '.join(clash)} already in the store {store.path}",
            "pass --replace to replace them (unchanged rows keep their row_id), or "
            "--split NAME to add a new split",
        )
    return counts, clash


def _unlabelled_splits(
    store: Store,
    report,
    counts: dict,
    split_expr: str,
    label: str | None,
    explicit_label: bool,
    no_label: bool,
) -> set:
    """The splits ingested as unlabelled: all without a label column; a split whose label is
    empty in every row when the label was inferred. Any other missing label is an error."""
    q = S.quote
    unlabelled = set(counts) if label is None else set()
    if label is not None:
        lq = q(label)
        missing = f"({lq} IS NULL OR trim(CAST({lq} AS VARCHAR)) = '')"
        per = store.fetchall(
            f"SELECT {split_expr}, count(*) FILTER (WHERE {missing}) FROM _dc_in GROUP BY 1"
        )
        for sp, n_missing in per:
            if not n_missing:
                continue
            if n_missing == counts[sp] and not explicit_label:
                unlabelled.add(sp)
                report.notes.append(
                    f"split {sp}: column {label!r} is empty in every row: ingested as unlabelled"
                )
                continue
            first = [
                r[0]
                for r in store.fetchall(
                    f"SELECT {_POS} FROM _dc_in WHERE {split_expr} = ? AND {missing} "
                    f"ORDER BY 1 LIMIT {_SHOW}",
                    [sp],
                )
            ]
            raise InputError(
                f"label column {label!r} is empty in {n_missing} of {counts[sp]} rows of split "
                f"{sp} (data rows {_rows(first)}{' ...' if n_missing > _SHOW else ''})",
                "drop those rows from the source, or ingest the split as unlabelled data "
                "with --label none",
            )
    if no_label:
        report.notes.append("ingested as unlabelled (--label none)")
    elif label is None:
        report.notes.append(
            "no label column found (none named label/labels/target/class): ingested as "
            "unlabelled; pass --label COL if the source has labels"
        )
    report.unlabelled = sorted(unlabelled)
    return unlabelled


def _select_rows(
    split_expr: str,
    label: str | None,
    unlabelled: set,
    splits: set,
    image: str | None,
    source_cols: list[str],
    renames: dict,
) -> list[str]:
    """The SELECT list of the rows to insert: row id first, content hash last (both rewritten
    by `_assign_row_ids`)."""
    q = S.quote
    select = [f"{_RID} AS {S.ROW_ID}", f"{split_expr} AS {S.SPLIT}"]
    if label is not None and unlabelled != splits:
        lab = q(label)
        if unlabelled:
            in_list = ", ".join(_sql_str(s) for s in sorted(unlabelled))
            lab = f"CASE WHEN {split_expr} IN ({in_list}) THEN NULL ELSE {q(label)} END"
        select.append(f"{lab} AS {S.LABEL}")
    if image is not None:
        select.append(f"{_IMG} AS {S.IMAGE_PATH}")
    # A source column that is the label or the split (by its name) is selected once, above.
    select += [
        f"{q(c)} AS {q(renames.get(c, c))}"
        for c in source_cols
        if renames.get(c, c) not in (S.LABEL, S.SPLIT)
    ]
    select.append(f"{_HASH} AS {S.CONTENT_HASH}")
    return select


def _assign_row_ids(
    store: Store,
    tbl: pa.Table,
    report,
    select: list[str],
    clash: list[str],
    split_expr: str,
    hash_expr: str,
) -> np.ndarray:
    """Give the staged rows their ids (editing `select` in place) and advance the counter.
    Replacing splits, an unchanged row keeps its id (matched on split and content hash,
    duplicates in order of occurrence); returns the ids retired (those not kept)."""
    floor = (
        int(store.scalar(f"SELECT max(row_id) + 1 FROM {S.SAMPLES}") or 0)
        if store.table_exists(S.SAMPLES)
        else 0
    )
    start = max(int(store.meta_get("next_row_id", 0)), floor)
    retired = np.zeros(0, dtype=np.int64)
    if clash and store.table_exists(S.SAMPLES):
        in_list = ", ".join(_sql_str(s) for s in clash)
        old_ids = (
            store.con.execute(f"SELECT row_id FROM {S.SAMPLES} WHERE split IN ({in_list})")
            .fetchnumpy()[S.ROW_ID]
            .astype(np.int64)
        )
        old = (
            f"SELECT row_id, split AS s, {S.CONTENT_HASH} AS h, row_number() OVER "
            f"(PARTITION BY split, {S.CONTENT_HASH} ORDER BY row_id) AS occ FROM {S.SAMPLES} "
            f"WHERE split IN ({in_list}) AND {S.CONTENT_HASH} IS NOT NULL"
        )
        keys = store.con.execute(
            f"WITH n AS (SELECT {_POS} AS pos, {split_expr} AS s, {hash_expr} AS h FROM _dc_in), "
            "n2 AS (SELECT *, row_number() OVER (PARTITION BY s, h ORDER BY pos) AS occ FROM n), "
            f"o AS ({old}) "
            "SELECT n2.h AS h, coalesce(o.row_id, -1) AS rid FROM n2 LEFT JOIN o USING (s, h, occ) "
            "ORDER BY n2.pos"
        ).fetchnumpy()
        rid = np.asarray(keys["rid"], dtype=np.int64)
        fresh = rid < 0
        n_new = int(fresh.sum())
        rid[fresh] = start + np.arange(n_new, dtype=np.int64)
        retired = np.setdiff1d(old_ids, rid[~fresh])
        report.kept, report.new, report.retired = int((~fresh).sum()), n_new, len(retired)
        # the ids and hashes join the staged rows as columns (zero-copy), no SQL join needed
        tbl = tbl.append_column(_RID, _np_arrow(rid)).append_column(
            _HASH, _np_arrow(np.asarray(keys["h"], dtype=np.uint64))
        )
        store.con.unregister("_dc_in")
        store.con.register("_dc_in", tbl)
    else:  # nothing to match: ids in source order, hashes computed by the INSERT itself
        n_new = tbl.num_rows
        select[0] = f"{start} + {_POS} AS {S.ROW_ID}"
        select[-1] = f"{hash_expr} AS {S.CONTENT_HASH}"
    store.meta_set("next_row_id", start + n_new)
    return retired


def _insert_rows(store: Store, report, body: str, clash: list[str], retired: np.ndarray) -> None:
    """Delete the replaced splits (retiring what was derived from their rows), create or
    extend `samples`, and insert the rows of `body`."""
    q = S.quote
    desc = store.fetchall(f"DESCRIBE {body}")
    new_types = {r[0]: r[1] for r in desc}
    if S.LABEL not in new_types:
        new_types[S.LABEL] = None
    if clash:
        in_list = ", ".join(_sql_str(s) for s in clash)
        store.execute(f"DELETE FROM {S.SAMPLES} WHERE split IN ({in_list})")
        _retire(store, retired)
        store.execute(f"DELETE FROM {S.SOURCES} WHERE split IN ({in_list})")
    if not store.table_exists(S.SAMPLES):
        lead = (S.ROW_ID, S.SPLIT, S.LABEL)
        order = list(lead) + [c for c in new_types if c not in lead]
        cols_sql = ", ".join(f"{q(c)} {new_types[c] or 'VARCHAR'}" for c in order)
        store.execute(f"CREATE TABLE {S.SAMPLES} ({cols_sql})")
        report.added_columns = []
    else:
        report.added_columns, widened = _reconcile(store, new_types, body)
        report.notes.extend(widened)
    names = ", ".join(q(c) for c in new_types if new_types[c] is not None)
    with _unordered_writes(store):
        store.execute(f"INSERT INTO {S.SAMPLES} ({names}) SELECT {names} FROM ({body})")


def _write_vectors(store: Store, src, report, vector: str, vec_dim: int, rid_expr: str) -> None:
    """A `--vector` column becomes the embedding table `embeddings_user_<col>`."""
    q = S.quote
    key = S.sanitize_key("user", vector)
    table = store.register_embedding(
        key,
        vec_dim,
        f"user column {vector}",
        vector,
        "user",
        False,
        info={"source": src.path},
    )
    store.execute(f"DELETE FROM {q(table)} WHERE row_id IN (SELECT {rid_expr} FROM _dc_in)")
    with _unordered_writes(store):
        store.execute(
            f"INSERT INTO {q(table)} SELECT {rid_expr}, CAST({q(vector)} AS FLOAT[{vec_dim}]) "
            "FROM _dc_in"
        )
    report.vector_key = key


def _record(
    store: Store,
    src,
    report,
    *,
    counts: dict,
    unlabelled: set,
    replaced: bool,
    stored: dict,
    vector: str | None,
    split_column: str | None,
    renames: dict,
) -> None:
    """The bookkeeping: the DataDefinition, one `sources` row per split, the report's
    summary fields. `stored`: the label, text and image columns under their stored names."""
    st_label = stored["label"]
    datadef.record(
        store,
        text=stored["text"],
        image=stored["image"],
        label=st_label,
        labelled=st_label is not None and unlabelled != set(counts),
        split_source=renames.get(split_column, split_column) if split_column else None,
        vector=vector,
        renames=renames,
    )
    options = {
        "split_column": split_column,
        "renamed": renames,
        "unlabelled": sorted(unlabelled),
        "replaced": replaced,
        "row_ids": {"kept": report.kept, "new": report.new, "retired": report.retired},
        **src.options,
    }
    for sp, n in counts.items():
        store.execute(
            f"INSERT OR REPLACE INTO {S.SOURCES} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now(), ?)",
            [
                sp,
                src.path,
                src.fmt,
                None if sp in unlabelled else st_label,
                stored["text"],
                stored["image"],
                str(src.root) if stored["image"] else None,
                vector,
                int(n),
                json.dumps(options, default=str),
            ],
        )
    report.split_counts = {k: int(v) for k, v in counts.items()}
    report.columns = [c for c, _ in store.columns(S.SAMPLES)]
    report.label_column = st_label


@contextlib.contextmanager
def _unordered_writes(store: Store):
    """Let DuckDB write a bulk INSERT's row groups straight to the file, in parallel, instead of
    logging every row to the WAL and copying it again at checkpoint: about half the time of a
    1M-row ingest. The price is that physical order follows source order only in long runs;
    nothing relies on it (`row_id` carries source order: ORDER BY row_id)."""
    before = store.scalar("SELECT current_setting('preserve_insertion_order')")
    store.execute("SET preserve_insertion_order = false")
    try:
        yield
    finally:
        store.execute(f"SET preserve_insertion_order = {'true' if before else 'false'}")


def _reconcile(store: Store, new_types: dict, body: str) -> tuple[list[str], list[str]]:
    """Make `samples` accept the new rows: add new columns (ALTER TABLE), adopt the type of a
    column that holds only NULLs so far, and accept a differing type only without loss: the new
    values are cast to the store's type when each casts there and back unchanged; otherwise the
    store's column is widened to the new type when each stored value survives that (e.g. BIGINT
    codes then text codes: the column becomes VARCHAR; never the label). Returns (columns
    added, notes)."""
    q = S.quote
    have = dict(store.columns(S.SAMPLES))
    by_lower = {k.lower(): k for k in have}
    added, notes = [], []
    for c, t in new_types.items():
        if t is None:
            continue
        c = by_lower.get(c.lower(), c)  # `Score` here is the store's `score`: one column
        if c not in have:
            store.execute(f"ALTER TABLE {S.SAMPLES} ADD COLUMN {q(c)} {t}")
            if c not in (S.IMAGE_PATH,):
                added.append(c)
            continue
        if have[c] == t:
            continue
        if not store.scalar(f"SELECT count({q(c)}) FROM {S.SAMPLES}"):
            store.execute(f"ALTER TABLE {S.SAMPLES} ALTER COLUMN {q(c)} TYPE {t}")
            continue

        def lossy(frm: str, col_type: str, to: str, c: str = c) -> int:
            return store.scalar(
                f"SELECT count(*) FROM ({frm}) WHERE {q(c)} IS NOT NULL AND "
                f"(TRY_CAST({q(c)} AS {to}) IS NULL OR "
                f"CAST(TRY_CAST({q(c)} AS {to}) AS {col_type}) IS DISTINCT FROM {q(c)})"
            )

        nested = ("[", "STRUCT", "MAP", "UNION")
        if c == S.LABEL and any(m in x for m in nested for x in (t, have[c])):
            n_bad = store.scalar(f"SELECT count({q(c)}) FROM ({body})")  # labels are scalars
        else:
            n_bad = lossy(body, t, have[c])
        if not n_bad:
            continue  # the INSERT casts the new values to the store's type
        if c != S.LABEL and not lossy(f"SELECT {q(c)} FROM {S.SAMPLES}", have[c], t):
            try:
                store.execute(f"ALTER TABLE {S.SAMPLES} ALTER COLUMN {q(c)} TYPE {t}")
                notes.append(f"column {c!r} widened from {have[c]} to {t} to hold the new values")
                continue
            except duckdb.Error:
                pass
        raise InputError(
            f"column {c!r} is {have[c]} in the store but {t} here, and {n_bad} values do "
            f"not convert to {have[c]}",
            f"make {c!r} the same type in every source (e.g. cast it before ingesting), "
            "or ingest into a new store",
        )
    return added, notes


def _retire(store: Store, retired: np.ndarray) -> None:
    """Delete what the store derived from rows that no longer exist: their vectors, and any
    cached kNN graph or predictions that include them."""
    if not len(retired):
        return
    with store.registered("_dc_retired", pa.table({S.ROW_ID: _np_arrow(retired.astype(np.int64))})):
        for e in store.embedding_keys():
            table = S.embedding_table(e["key"])
            # a view over Parquet shards (the Ray engine) keeps the vectors of retired rows:
            # their ids are never reused and every reader selects rows by id
            if store.table_exists(table) and not _is_view(store, table):
                store.execute(
                    f"DELETE FROM {S.quote(table)} WHERE row_id IN (SELECT row_id FROM _dc_retired)"
                )
        if store.table_exists(S.KNN_GRAPHS):
            for (key,) in store.fetchall(f"SELECT key FROM {S.KNN_GRAPHS}"):
                table = S.knn_table(key)
                hit = not store.table_exists(table) or store.scalar(
                    f"SELECT count(*) FROM {S.quote(table)} "
                    "WHERE row_id IN (SELECT row_id FROM _dc_retired)"
                )
                if hit:
                    kind = "VIEW" if _is_view(store, table) else "TABLE"
                    store.execute(f"DROP {kind} IF EXISTS {S.quote(table)}")
                    store.execute(f"DELETE FROM {S.KNN_GRAPHS} WHERE key = ?", [key])
        if store.table_exists(S.PREDICTIONS):
            store.execute(
                f"DELETE FROM {S.PREDICTIONS} WHERE fingerprint IN (SELECT DISTINCT fingerprint "
                f"FROM {S.PREDICTIONS} WHERE row_id IN (SELECT row_id FROM _dc_retired))"
            )


def _is_view(store: Store, name: str) -> bool:
    return bool(
        store.scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ? "
            "AND table_type = 'VIEW'",
            [name],
        )
    )
