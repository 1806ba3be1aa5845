"""Ingest: read a source into `samples`, in bulk and in one transaction.

Sources: CSV, TSV, Parquet (a file or a folder of files), JSONL/JSON, a Hugging Face
`save_to_disk` folder (a `DatasetDict` becomes splits), an image folder (`root/<class>/*` or
`root/<split>/<class>/*`), or any table whose image column holds paths relative to the table's
folder. Files are read by DuckDB into Arrow, then every check and the insert run as SQL over
that Arrow table: no Python loop per row (image files are opened once each, in a thread pool).

What `samples` holds after an ingest (the store's public contract, see the README):

- every source column under its own name and type, except a `--vector` column, which becomes the
  embedding `embeddings_user_<col>` instead (too wide to copy into every query of `samples`);
- `row_id` (stable, never reused), `split` (VARCHAR), `label` (the label column's values and
  type; NULL in an unlabelled split), `image_path` (absolute, resolved) for image data, and
  `_content_hash` (hash of the row's source values, used to keep row ids across re-ingests);
- a source column named like one of those (and not used for that role) is kept as
  `<name>_source`.

Re-ingesting a split with `replace=True` keeps the row id of every row whose source values are
unchanged (matched on the content hash; duplicates matched in order of occurrence), gives new
rows fresh ids from the never-reused counter, and retires the rest: their embeddings and any
cached kNN graph or predictions that contain them are deleted in the same transaction.

Every problem the user can fix raises `InputError` naming the problem and the fix; nothing is
written unless the whole ingest succeeds. Ingest also writes the store's DataDefinition (the role
and type of every column, `store/datadef.py`).

The modules: this one settles the roles and stages the rows; `sources` reads a source into
Arrow; `ingest_checks` infers the content column and checks vectors and image files;
`ingest_write` writes the rows, row ids and bookkeeping in one transaction.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from . import schema as S
from .db import Store
from .errors import InputError
from .ingest_checks import _check_images, _check_vectors, _infer_content, _np_arrow
from .ingest_write import _IMG, _INTERNAL, _POS, _SPL, _sql_str, _write
from .sources import _Source, frame_source, read_source

# Column names taken as the label when no --label is given (case-insensitive, exactly one).
LABEL_NAMES = ("label", "labels", "target", "class")
# A label value meaning "this split has no labels" (`--label none`).
NO_LABEL = ("", "none")


# --- report ------------------------------------------------------------------------------------
@dataclass
class IngestReport:
    """What an ingest did. `summary()` is what `datacure ingest` prints."""

    split_counts: dict
    source: str
    columns: list
    fmt: str = "frame"
    label_column: str | None = None
    text_column: str | None = None
    image_column: str | None = None
    vector_key: str | None = None
    unlabelled: list = field(default_factory=list)
    kept: int = 0
    new: int = 0
    retired: int = 0
    renamed: dict = field(default_factory=dict)
    added_columns: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def summary(self) -> str:
        parts = ", ".join(
            f"{k}: {v} rows" + (" (unlabelled)" if k in self.unlabelled else "")
            for k, v in self.split_counts.items()
        )
        lines = [f"ingested {self.source} ({self.fmt}) -> {parts}"]
        roles = [
            f"label: {self.label_column or '-'}",
            f"text: {self.text_column or '-'}",
            f"image: {self.image_column or '-'}",
        ]
        if self.vector_key:
            roles.append(f"vectors: {S.embedding_table(self.vector_key)}")
        lines.append("  " + "; ".join(roles))
        if self.kept or self.retired:
            lines.append(
                f"  replaced: {self.kept} unchanged rows kept their row_id, {self.new} new, "
                f"{self.retired} retired"
            )
        if self.renamed:
            lines.append(
                "  renamed (reserved names): "
                + ", ".join(f"{a} -> {b}" for a, b in self.renamed.items())
            )
        if self.added_columns:
            lines.append("  new columns added to samples: " + ", ".join(self.added_columns))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# --- public API ----------------------------------------------------------------------------------
def ingest(
    store: Store,
    source: str | os.PathLike | object,
    split: str | None = None,
    split_column: str | None = None,
    label: str | None = None,
    text: str | None = None,
    image: str | None = None,
    vector: str | None = None,
    fmt: str | None = None,
    replace: bool = False,
    allow_outside: bool = False,
) -> IngestReport:
    """Read `source` (file or folder) into the store in one transaction.

    `label`, `text` and `image` are inferred when not given and unambiguous (an error lists the
    candidates otherwise; an image column only when its files exist); `label="none"` ingests
    the split as unlabelled, and `text="none"` / `image="none"` say the source has no such
    column (nothing is inferred for it). Without `split` or
    `split_column`, a source column named `split` gives the splits, else a file named like
    `test.csv` gives `test`, else the split is `train`. An existing split is refused unless
    `replace`. Image paths must stay inside the source's folder unless `allow_outside`.

    `source` may also be an in-memory table: a polars or pandas DataFrame, a pyarrow Table, or
    a Hugging Face `Dataset`/`DatasetDict`; roles are inferred as for a file, and relative image
    paths start from the working directory.
    """
    if isinstance(source, (str, os.PathLike)):
        src = read_source(store, source, fmt=fmt, split=split)
    else:
        src = frame_source(source, split=split)
    return _ingest(
        store,
        src,
        split=split if src.split_values is None else None,
        split_column=split_column,
        label=label,
        text=text,
        image=image,
        vector=vector,
        replace=replace,
        allow_outside=allow_outside,
        infer=True,
    )


def ingest_frame(
    store: Store,
    frame: pl.DataFrame | pa.Table | object,
    split: str | None = "train",
    split_column: str | None = None,
    label: str | None = None,
    text: str | None = None,
    image: str | None = None,
    replace: bool = False,
    source: str = "<frame>",
    vector: str | None = None,
    image_root: str | os.PathLike | None = None,
    allow_outside: bool = False,
) -> IngestReport:
    """Add the rows of an in-memory frame to `samples` (one transaction), as `ingest` does.

    Roles are taken as given: no text or image inference; the label is `label` when given, else
    a column named exactly `label`, else none. Image paths are relative to `image_root`
    (default: the working directory)."""
    src = frame_source(frame, name=source, root=image_root)
    tbl = src.table
    if label is None and S.LABEL in tbl.column_names:
        label = S.LABEL
    return _ingest(
        store,
        src,
        split=None if split_column else (split or "train"),
        split_column=split_column,
        label=label,
        text=text,
        image=image,
        vector=vector,
        replace=replace,
        allow_outside=allow_outside,
        infer=False,
    )


# --- the ingest itself ----------------------------------------------------------------------------
def _columns_hint(cols: list[str], want: str) -> str:
    near = difflib.get_close_matches(want, cols, n=3)
    listed = ", ".join(cols[:30]) + (" ..." if len(cols) > 30 else "")
    return (f"did you mean {', '.join(near)}? " if near else "") + f"the columns are: {listed}"


def _require_column(cols: list[str], col: str, option: str, name: str) -> None:
    if col not in cols:
        raise InputError(
            f"{option} {col!r}: {name} has no column {col!r}", _columns_hint(cols, col)
        )


@dataclass
class _Roles:
    """The columns an ingest gives a role (source names), and how the user set them."""

    split: str | None
    split_column: str | None
    label: str | None
    text: str | None
    image: str | None
    vector: str | None
    no_label: bool = False
    no_text: bool = False
    no_image: bool = False
    explicit_label: bool = False
    notes: list = field(default_factory=list)


def _ingest(
    store: Store,
    src: _Source,
    *,
    split: str | None,
    split_column: str | None,
    label: str | None,
    text: str | None,
    image: str | None,
    vector: str | None,
    replace: bool,
    allow_outside: bool,
    infer: bool,
) -> IngestReport:
    """Check the source's names, settle every role, stage the rows in Arrow and write them in
    one transaction (`ingest_write._write`)."""
    cols = list(src.table.column_names)
    _check_names(src, cols)
    split, split_column = _resolve_split(src, cols, split, split_column, infer)
    r = _Roles(split, split_column, label, text, image, vector)
    _parse_options(r, cols, src.name)
    before = store.data_definition()  # the roles of the splits already stored
    _match_store_roles(before, r, cols, src.name)
    _pick_label(r, cols, src, before, infer)
    types = _infer_roles(store, r, src, cols, infer)
    renames = _reserved_renames(cols, r, src.name)
    tbl, vec_dim, split_expr = _stage(store, src, r, types, allow_outside)
    report = IngestReport(
        {},
        src.name,
        [],
        fmt=src.fmt,
        label_column=None if r.label is None else renames.get(r.label, r.label),
        text_column=None if r.text is None else renames.get(r.text, r.text),
        image_column=None if r.image is None else renames.get(r.image, r.image),
        renamed=dict(renames),
        notes=r.notes,
    )
    with store.transaction():
        with store.registered("_dc_in", tbl):
            _write(
                store,
                tbl,
                src,
                report,
                split_expr=split_expr,
                label=r.label,
                explicit_label=r.explicit_label,
                no_label=r.no_label,
                image=r.image,
                vector=r.vector,
                vec_dim=vec_dim,
                text=r.text,
                split_column=r.split_column,
                renames=renames,
                source_cols=[c for c in cols if c != r.vector],
                # every source value, the vector included
                hash_expr="hash(" + ", ".join(S.quote(c) for c in cols) + ")",
                replace=replace,
            )
    return report


def _check_names(src: _Source, cols: list[str]) -> None:
    """Refuse names DuckDB cannot tell apart, datacure's staging names, and an empty source."""
    lower = [c.lower() for c in cols]
    if len(set(lower)) != len(lower):
        dup = sorted({c for c in cols if lower.count(c.lower()) > 1})
        raise InputError(
            f"{src.name} has column names that differ only in case (or repeat): {', '.join(dup)}",
            "rename them: DuckDB column names are case-insensitive",
        )
    bad_names = [c for c in cols if c in _INTERNAL]
    if bad_names:
        raise InputError(f"{src.name} uses reserved column name(s) {bad_names}", "rename them")
    if src.table.num_rows == 0:
        raise InputError(
            f"{src.name} has no rows" + (f" (columns: {', '.join(cols)})" if cols else ""),
            "point at a file that holds data rows",
        )


def _resolve_split(
    src: _Source, cols: list[str], split: str | None, split_column: str | None, infer: bool
) -> tuple[str | None, str | None]:
    """(split name, split column): one of them, or neither where the reader knows the splits."""
    if split is not None and split_column is not None:
        raise InputError("both --split and --split-column given", "pass one of them")
    if src.split_values is not None and split_column is not None:
        raise InputError(
            f"{src.name} already has splits ({src.fmt}); --split-column does not apply",
            "drop --split-column (use --split NAME to ingest one of its splits)",
        )
    if split_column is not None:
        _require_column(cols, split_column, "--split-column", src.name)
    elif split is None and src.split_values is None:
        if infer and S.SPLIT in cols:
            split_column = S.SPLIT
        else:
            split = src.default_split or "train"
    if split is not None and not str(split).strip():
        raise InputError("--split is empty", "name the split, e.g. --split train")
    return split, split_column


def _parse_options(r: _Roles, cols: list[str], name: str) -> None:
    """`--label/--text/--image none` (when no column has that name) and the named columns."""

    def none(v: str | None) -> bool:
        return v is not None and v.strip().lower() in NO_LABEL and v not in cols

    r.no_label, r.no_text, r.no_image = none(r.label), none(r.text), none(r.image)
    # `--text none` / `--image none`: the source has no such column; do not infer one
    if r.no_label:
        r.label = None
    if r.no_text:
        r.text = None
    if r.no_image:
        r.image = None
    r.explicit_label = r.label is not None
    for opt, col in (("--label", r.label), ("--text", r.text), ("--image", r.image)):
        if col is not None:
            _require_column(cols, col, opt, name)
    if r.vector is not None:
        _require_column(cols, r.vector, "--vector", name)
    if r.text and r.image:
        raise InputError(
            "both --text and --image given", "a store holds one modality: pass one of them"
        )


def _match_store_roles(d, r: _Roles, cols: list[str], name: str) -> None:
    """Every split of a store shares its content column: take it from the store's data
    definition `d`, refusing a source that lacks it or names another."""
    meta_text, meta_image = d.text_column, d.image_column
    if (r.no_text and meta_text) or (r.no_image and meta_image):
        raise InputError(
            f"--{'text' if r.no_text and meta_text else 'image'} none, but the store's rows have "
            f"a {'text' if meta_text else 'image'} column ({meta_text or meta_image!r})",
            "every split of a store shares one content column: ingest this source into "
            "another store (--db)",
        )
    if not (meta_text or meta_image):
        return
    kind = "text" if meta_text else "image"
    if (r.text and meta_image) or (r.image and meta_text):
        have = f"text column {meta_text!r}" if meta_text else f"image column {meta_image!r}"
        raise InputError(
            f"the store holds {kind} data ({have})", "ingest this source into another store (--db)"
        )
    want = meta_text or meta_image
    want_src = d.column_sources.get(want, want)
    given = r.text or r.image
    if given is not None and given != want_src:
        raise InputError(
            f"the store's {kind} column is {want_src!r}, not {given!r}",
            f"rename {given!r} to {want_src!r} in the source so every split shares one column",
        )
    if want_src not in cols:
        raise InputError(
            f"{name} has no column {want_src!r}, the store's {kind} column",
            f"rename its column to {want_src!r} (or pass --{kind} with a matching name). "
            f"{_columns_hint(cols, want_src)}",
        )
    r.text, r.image = (want_src, None) if meta_text else (None, want_src)


def _pick_label(r: _Roles, cols: list[str], src: _Source, d, infer: bool) -> None:
    """No --label: the store's label column, else the reader's, else one named like a label.
    (`d`: the store's DataDefinition.)"""
    if r.label is None and not r.no_label:
        stored = d.column_sources.get(d.label_column, d.label_column)
        if stored and stored in cols:
            r.label = stored
        elif src.label:
            r.label = src.label
        elif infer:
            taken = {r.split_column, r.text, r.image, r.vector}
            cands = [c for c in cols if c.lower() in LABEL_NAMES and c not in taken]
            if len(cands) > 1:
                raise InputError(
                    f"several columns could be the label: {', '.join(cands)}",
                    "pass --label COL (or --label none for an unlabelled split)",
                )
            r.label = cands[0] if cands else None
    if r.image is None and r.text is None and src.image is not None and not r.no_image:
        r.image = src.image


def _infer_roles(store: Store, r: _Roles, src: _Source, cols: list[str], infer: bool) -> dict:
    """Infer the text or image column where none is set; returns the source's DuckDB types."""
    with store.registered("_dc_src", src.table):
        if infer and r.text is None and r.image is None and not (r.no_text and r.no_image):
            r.text, r.image = _infer_content(
                store,
                cols,
                {r.split_column, r.label, r.vector},
                src.root,
                r.notes,
                r.no_text,
                r.no_image,
            )
        if r.text is None and r.image is None and r.vector is None:
            r.notes.append(
                "no text or image column: pass --text COL or --image COL (or --vector COL) "
                "so `datacure embed` knows what to embed"
            )
        return {row[0]: row[1] for row in store.fetchall("DESCRIBE SELECT * FROM _dc_src")}


def _reserved_renames(cols: list[str], r: _Roles, name: str) -> dict[str, str]:
    """Source name -> stored name for columns named like datacure's own (case-insensitive, as
    DuckDB names are): `Label` used as the label is stored as `label`; one not used for that
    role is kept as `<name>_source`."""
    reserved = {x.lower(): x for x in S.RESERVED + (S.CONTENT_HASH,)}
    role_for = {S.SPLIT: r.split_column, S.LABEL: r.label}
    renames: dict[str, str] = {}
    for c in cols:
        res = reserved.get(c.lower())
        if c == r.vector or res is None:
            continue
        if role_for.get(res) == c:
            if c != res:
                renames[c] = res
        else:
            renames[c] = f"{c}_source"
    others = {c.lower() for c in cols if c not in renames}
    clash = [v for v in renames.values() if v.lower() in others]
    if clash:
        raise InputError(
            f"{name} has columns {', '.join(clash)} and also the reserved names they would "
            "be renamed from",
            "rename the reserved-name columns (row_id, split, label, image_path) in the source",
        )
    return renames


def _stage(
    store: Store, src: _Source, r: _Roles, types: dict, allow_outside: bool
) -> tuple[pa.Table, int | None, str]:
    """The Arrow table to insert from (vectors checked, image paths resolved, source positions
    and split values added), the vector dimension, and the SQL expression of each row's split."""
    tbl = src.table
    vec_dim = None
    if r.vector is not None:
        tbl, vec_dim = _check_vectors(store, tbl, r.vector, types[r.vector], src.name)
    if r.image is not None:
        img_paths = src.checked_images
        if img_paths is None:
            img_paths = _check_images(
                tbl.column(r.image), src.root, allow_outside, src.name, r.image
            )
        tbl = tbl.append_column(_IMG, img_paths)
    tbl = tbl.append_column(_POS, _np_arrow(np.arange(tbl.num_rows, dtype=np.int64)))
    if src.split_values is not None:
        tbl = tbl.append_column(_SPL, src.split_values)
        split_expr = _SPL
    elif r.split_column is not None:
        # a blank split name counts as missing (as `--split ""` is refused)
        sc = f"CAST({S.quote(r.split_column)} AS VARCHAR)"
        split_expr = f"CASE WHEN trim({sc}) = '' THEN NULL ELSE {sc} END"
    else:
        split_expr = _sql_str(r.split)
    return tbl, vec_dim, split_expr
