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
written unless the whole ingest succeeds.
"""

from __future__ import annotations

import contextlib
import difflib
import gzip
import json
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from . import datadef
from . import schema as S
from .db import Store
from .errors import InputError

FORMATS = ("csv", "tsv", "parquet", "jsonl", "hf", "imagefolder")
_SUFFIX_FORMAT = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_COMPRESSED = (".gz", ".zst")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
# Column names taken as the label when no --label is given (case-insensitive, exactly one).
LABEL_NAMES = ("label", "labels", "target", "class")
# First words of a file name taken as the split name when neither --split nor --split-column is
# given.
SPLIT_STEMS = ("train", "test", "val", "valid", "validation", "dev", "eval")
# A label value meaning "this split has no labels" (`--label none`).
NO_LABEL = ("", "none")
# Pillow refuses images with more pixels than this (decompression bombs); override with
# DATACURE_MAX_IMAGE_PIXELS.
MAX_IMAGE_PIXELS = int(os.environ.get("DATACURE_MAX_IMAGE_PIXELS", "100000000"))
# Internal columns of the staged Arrow table; never stored.
_POS, _RID, _HASH, _IMG, _SPL = "__dc_pos", "__dc_rowid", "__dc_hash", "__dc_image", "__dc_split"
_INTERNAL = (_POS, _RID, _HASH, _IMG, _SPL)
_SHOW = 5  # how many bad rows or files an error names


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


@dataclass
class _Source:
    """A source read into Arrow, with what its reader knows about it."""

    table: pa.Table
    fmt: str
    name: str  # as the user named it, for messages
    path: str  # absolute, for `sources`
    root: Path  # folder that relative image paths start from
    split_values: pa.Array | None = None  # per-row split known to the reader (not a column)
    default_split: str | None = None
    label: str | None = None  # role columns the reader knows (image folder, ClassLabel)
    image: str | None = None
    options: dict = field(default_factory=dict)
    # resolved image paths already checked by `_check_images` (the Ray engine checks them on
    # its workers, chunk by chunk); None: `_ingest` checks them
    checked_images: pa.Array | None = None


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


# --- reading -------------------------------------------------------------------------------------
def detect_format(path: Path) -> str:
    """The format of a file or folder, from its name or contents."""
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return "hf"
        if any(path.glob("*.parquet")):
            return "parquet"
        return "imagefolder"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    fmt = _SUFFIX_FORMAT.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise InputError(
            f"cannot tell the format of {path} from its name",
            f"pass --format, one of: {', '.join(FORMATS)}",
        )
    return fmt


def read_source(
    store: Store, source: str | os.PathLike, fmt: str | None = None, split: str | None = None
) -> _Source:
    """Read a file or folder into Arrow (bulk). `split` picks one split of a multi-split source
    (a DatasetDict, a split-layout image folder)."""
    name = str(source)
    path = Path(source).expanduser()
    if not path.exists():
        hint = ""
        if path.parent.exists():
            near = difflib.get_close_matches(path.name, os.listdir(path.parent), n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise InputError(
            f"source {name} does not exist{hint}",
            "check the path; SOURCE is a CSV/TSV/Parquet/JSONL file, a Hugging Face "
            "save_to_disk folder or an image folder",
        )
    if fmt is not None:
        fmt = fmt.lower().strip()
        if fmt not in FORMATS:
            raise InputError(f"unknown --format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    fmt = fmt or detect_format(path)
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{name} is empty (0 bytes)", "point at a file that holds your data")
    if fmt == "hf":
        src = _read_hf(path, name, split)
    elif fmt == "imagefolder":
        src = _read_imagefolder(path, name, split)
    else:
        src = _read_table(store, path, name, fmt)
    # `test.csv`, `train_10k.csv`, `dev-paired.tsv`: the first word of the name is the split
    word = re.split(r"[._\- ]", path.name.lower(), maxsplit=1)[0]
    if src.default_split is None and word in SPLIT_STEMS and path.is_file():
        src.default_split = word
    return src


def _read_table(store: Store, path: Path, name: str, fmt: str) -> _Source:
    if path.is_dir():
        if fmt != "parquet":
            raise InputError(
                f"{name} is a folder; --format {fmt} reads a single file",
                "point at the file, or use --format parquet for a folder of Parquet files",
            )
        target = str(path / "*.parquet")
    else:
        target = str(path)
    calls = {
        "csv": "read_csv(?, header = true{extra})",
        "tsv": "read_csv(?, header = true, delim = '\t'{extra})",
        "jsonl": "read_json(?, format = 'auto'{extra})",
        "parquet": "read_parquet(?)",
    }
    if fmt not in calls:
        raise InputError(f"--format {fmt} cannot read {name}", "use csv, tsv, parquet or jsonl")
    tbl = None
    for extra in ("", ", sample_size = -1"):
        if extra and fmt == "parquet":
            break
        query = "SELECT * FROM " + calls[fmt].format(extra=extra)
        try:
            tbl = store.con.sql(query, params=[target]).to_arrow_table()
            break
        except duckdb.Error as exc:
            msg = str(exc)
            if not extra and "could not convert" in msg.lower() and fmt != "parquet":
                continue  # the type sniffer saw too few rows: sniff the whole file instead
            raise _read_error(path, name, fmt, msg) from None
    root = (path if path.is_dir() else path.parent).resolve()
    return _Source(tbl, fmt, name, str(path.resolve()), root)


def _read_error(path: Path, name: str, fmt: str, msg: str) -> InputError:
    """Turn a reader's error into a message that names the problem and the fix."""
    low = msg.lower()
    if any(w in low for w in ("unicode", "utf-8", "utf8", "encoding")) and path.is_file():
        bad = find_invalid_utf8(path)
        if bad is not None:
            offset, line, sample, guess = bad
            return InputError(
                f"{name} is not UTF-8 text: invalid byte(s) {sample!r} at byte offset {offset} "
                f"(line {line}){guess}",
                "re-encode the file as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 "
                f"{name} > fixed.{fmt}` (use the file's real encoding), then ingest that",
            )
    first = msg.strip().splitlines()[0] if msg.strip() else msg
    if fmt in ("csv", "tsv") and "could not convert" in low:
        fix = "make the column's values one type, or quote them so they read as text"
    elif fmt == "parquet":
        fix = "check that the file is a complete Parquet file (re-export it)"
    elif fmt == "jsonl":
        fix = "check that each line is one JSON object (JSON Lines), or pass --format csv/parquet"
    else:
        fix = f"check that {name} is a valid {fmt} file, or pass --format"
    return InputError(f"cannot read {name} as {fmt}: {first}", fix)


def find_invalid_utf8(path: Path, chunk: int = 1 << 24) -> tuple[int, int, bytes, str] | None:
    """(byte offset, 1-based line, the bad bytes, a guess at the encoding) of the first byte
    sequence that is not UTF-8, or None. Reads in chunks, so memory stays flat in file size."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    base, lines, carry = 0, 0, b""
    with opener(path, "rb") as f:
        head = f.read(4)
        if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return 0, 1, head[:2], " (a UTF-16 byte-order mark: the file is UTF-16)"
        carry = head
        while True:
            block = f.read(chunk)
            data = carry + block
            try:
                data.decode("utf-8")
                used = len(data)
                carry = b""
            except UnicodeDecodeError as exc:
                if block and exc.reason == "unexpected end of data":
                    used, carry = exc.start, data[exc.start :]
                else:
                    bad = data[exc.start : exc.end]
                    line = lines + data[: exc.start].count(b"\n") + 1
                    guess = ""
                    try:
                        shown = data[exc.start : exc.end].decode("cp1252")
                        guess = f"; as Windows-1252/Latin-1 it reads {shown!r}"
                    except UnicodeDecodeError:
                        pass
                    return base + exc.start, line, bad, guess
            lines += data[:used].count(b"\n")
            base += used
            if not block:
                return None


def frame_source(
    data: object,
    split: str | None = None,
    name: str = "<frame>",
    root: str | os.PathLike | None = None,
) -> _Source:
    """An in-memory table as a source: polars or pandas DataFrame, pyarrow Table or RecordBatch,
    Hugging Face Dataset or DatasetDict (a DatasetDict's keys are its splits)."""
    base = Path(root or ".").resolve()
    module = type(data).__module__.split(".")[0]
    if isinstance(data, pl.DataFrame):
        tbl = data.to_arrow()
    elif isinstance(data, pa.RecordBatch):
        tbl = pa.Table.from_batches([data])
    elif isinstance(data, pa.Table):
        tbl = data
    elif module == "pandas" and type(data).__name__ == "DataFrame":
        try:
            tbl = pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputError(
                f"cannot convert the pandas DataFrame to Arrow: {exc}",
                "give each column one type (e.g. `df[col] = df[col].astype(str)`)",
            ) from None
    elif module == "datasets" and type(data).__name__ in ("Dataset", "DatasetDict"):
        src = _hf_source(data, name, base, split, str(base))
        src.fmt = "frame"
        return src
    else:
        raise InputError(
            f"cannot ingest an object of type {type(data).__module__}.{type(data).__name__}",
            "pass a file or folder path, a polars or pandas DataFrame, a pyarrow Table, or a "
            "Hugging Face Dataset/DatasetDict",
        )
    return _Source(tbl, "frame", name, name, base)


def _read_hf(path: Path, name: str, split: str | None) -> _Source:
    try:
        import datasets
    except ImportError:  # pragma: no cover - declared dependency
        raise InputError(
            "reading a Hugging Face dataset needs the `datasets` package",
            "pip install datasets",
        ) from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a bad folder
        raise InputError(
            f"cannot read {name} as a Hugging Face dataset: {exc}",
            "point at a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`",
        ) from None
    return _hf_source(ds, name, path.resolve(), split, str(path.resolve()))


def _hf_source(ds, name: str, root: Path, split: str | None, where: str) -> _Source:
    """A loaded Dataset or DatasetDict as a source (ClassLabel names kept, splits from keys)."""
    is_dict = type(ds).__name__ == "DatasetDict"
    parts = dict(ds) if is_dict else {None: ds}
    if split is not None and None not in parts:
        if split not in parts:
            raise InputError(
                f"{name} has no split {split!r}", f"its splits are: {', '.join(map(str, parts))}"
            )
        parts = {split: parts[split]}
    tables, options = [], {}
    label = None
    for d in parts.values():
        t = d.with_format("arrow")[:] if len(d) else d.data.table.slice(0, 0)
        if isinstance(t, pa.RecordBatch):
            t = pa.Table.from_batches([t])
        tables.append(t)
        for col, feat in d.features.items():
            if type(feat).__name__ == "ClassLabel":
                options.setdefault("class_names", {})[col] = list(feat.names)
            if type(feat).__name__ == "Image":
                options.setdefault("image_features", []).append(col)
    images = sorted(set(options.get("image_features", [])))
    if images:
        raise InputError(
            f"{name} stores images inside the dataset (column(s) {', '.join(images)})",
            "save the images as files and ingest a table of their paths with --image, or an "
            "image folder (root/<class>/*)",
        )
    try:
        tbl = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    except pa.ArrowInvalid as exc:
        raise InputError(
            f"the splits of {name} have incompatible columns: {exc}",
            "ingest one split at a time with --split NAME",
        ) from None
    split_values = None
    if None not in parts:
        split_values = pa.array(
            np.repeat(np.array(list(parts), dtype=object), [len(t) for t in tables]), pa.string()
        )
    names = options.get("class_names", {})
    if len(names) == 1:
        label = next(iter(names))
    return _Source(
        tbl,
        "hf",
        name,
        where,
        root,
        split_values=split_values,
        label=label,
        options=options,
    )


def _read_imagefolder(path: Path, name: str, split: str | None) -> _Source:
    """`root/<class>/<file>` or `root/<split>/<class>/<file>`: a table of (image, label)."""
    root = path.resolve()
    rels: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for fn in sorted(filenames):
            if not fn.startswith(".") and fn.lower().endswith(IMAGE_EXTENSIONS):
                rels.append(fn if rel_dir == "." else f"{rel_dir}/{fn}".replace(os.sep, "/"))
    if not rels:
        raise InputError(
            f"{name} is a folder with no image files ({', '.join(IMAGE_EXTENSIONS)}) and no "
            "dataset files",
            "point at an image folder (root/<class>/*.png), a Hugging Face save_to_disk folder "
            "or a folder of Parquet files, or pass --format",
        )
    s = pl.Series("image", rels)
    depth = s.str.count_matches("/") + 1
    depths = sorted(depth.unique().to_list())
    if depths not in ([2], [3]):
        shown = ", ".join(s.filter(depth != (3 if 3 in depths else 2)).head(3).to_list())
        raise InputError(
            f"{name} is not an image folder of one layout: image files at depths {depths} "
            f"(e.g. {shown})",
            "lay it out as root/<class>/<file> or root/<split>/<class>/<file>",
        )
    parts = s.str.split("/")
    label = parts.list.get(-2)
    split_values = None
    if depths == [3]:
        sp = parts.list.get(0)
        if split is not None:
            keep = sp == split
            if not keep.any():
                raise InputError(
                    f"{name} has no split folder {split!r}",
                    f"its split folders are: {', '.join(sorted(sp.unique().to_list()))}",
                )
            s, label, sp = s.filter(keep), label.filter(keep), sp.filter(keep)
        split_values = sp.to_arrow()
    tbl = pa.table({"image": s.to_arrow(), "label": label.to_arrow()})
    return _Source(
        tbl,
        "imagefolder",
        name,
        str(root),
        root,
        split_values=split_values,
        label="label",
        image="image",
        options={"layout": "split/class" if depths == [3] else "class"},
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


def _np_arrow(a: np.ndarray) -> pa.Array:
    """A numeric numpy array as Arrow, zero-copy. (`pa.array` would import pandas, about half
    a second, on its first call in a process.)"""
    a = np.ascontiguousarray(a)
    kind = {"i8": pa.int64(), "u8": pa.uint64(), "f4": pa.float32(), "f8": pa.float64()}
    return pa.Array.from_buffers(kind[a.dtype.str[1:]], len(a), [None, pa.py_buffer(a)])


def _sql_str(v: str) -> str:
    return "'" + str(v).replace("'", "''") + "'"


def _rows(positions) -> str:
    return ", ".join(str(int(p) + 1) for p in positions)


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
    tbl = src.table
    cols = list(tbl.column_names)
    notes: list[str] = []
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
    if tbl.num_rows == 0:
        raise InputError(
            f"{src.name} has no rows" + (f" (columns: {', '.join(cols)})" if cols else ""),
            "point at a file that holds data rows",
        )

    # --- split --------------------------------------------------------------------------------
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

    # --- roles --------------------------------------------------------------------------------
    no_label = label is not None and label.strip().lower() in NO_LABEL and label not in cols
    if no_label:
        label = None
    # `--text none` / `--image none`: the source has no such column; do not infer one
    no_text = text is not None and text.strip().lower() in NO_LABEL and text not in cols
    no_image = image is not None and image.strip().lower() in NO_LABEL and image not in cols
    if no_text:
        text = None
    if no_image:
        image = None
    explicit_label = label is not None
    for opt, col in (
        ("--label", label),
        ("--text", text),
        ("--image", image),
        ("--vector", vector),
    ):
        if col is not None:
            _require_column(cols, col, opt, src.name)
    if text and image:
        raise InputError(
            "both --text and --image given", "a store holds one modality: pass one of them"
        )
    before = store.data_definition()
    meta_text, meta_image, meta_label = before.text_column, before.image_column, before.label_column
    renames: dict[str, str] = {}  # source name -> stored name, filled below

    def stored(c: str | None) -> str | None:
        return None if c is None else renames.get(c, c)

    source_of = before.column_sources  # stored name -> source name
    if (no_text and meta_text) or (no_image and meta_image):
        raise InputError(
            f"--{'text' if no_text and meta_text else 'image'} none, but the store's rows have a "
            f"{'text' if meta_text else 'image'} column ({meta_text or meta_image!r})",
            "every split of a store shares one content column: ingest this source into "
            "another store (--db)",
        )
    if meta_text or meta_image:
        if (text and meta_image) or (image and meta_text):
            have = f"text column {meta_text!r}" if meta_text else f"image column {meta_image!r}"
            raise InputError(
                f"the store holds {'text' if meta_text else 'image'} data ({have})",
                "ingest this source into another store (--db)",
            )
        want = meta_text or meta_image
        want_src = source_of.get(want, want)
        given = text or image
        if given is not None and given != want_src:
            raise InputError(
                f"the store's {'text' if meta_text else 'image'} column is {want_src!r}, "
                f"not {given!r}",
                f"rename {given!r} to {want_src!r} in the source so every split shares one column",
            )
        if want_src not in cols:
            raise InputError(
                f"{src.name} has no column {want_src!r}, the store's "
                f"{'text' if meta_text else 'image'} column",
                f"rename its column to {want_src!r} (or pass --{'text' if meta_text else 'image'} "
                f"with a matching name). {_columns_hint(cols, want_src)}",
            )
        text, image = (want_src, None) if meta_text else (None, want_src)

    if label is None and not no_label:
        meta_label_src = source_of.get(meta_label, meta_label)
        if meta_label_src and meta_label_src in cols:
            label = meta_label_src
        elif src.label:
            label = src.label
        elif infer:
            taken = {split_column, text, image, vector}
            cands = [c for c in cols if c.lower() in LABEL_NAMES and c not in taken]
            if len(cands) > 1:
                raise InputError(
                    f"several columns could be the label: {', '.join(cands)}",
                    "pass --label COL (or --label none for an unlabelled split)",
                )
            label = cands[0] if cands else None
    if image is None and text is None and src.image is not None and not no_image:
        image = src.image

    store.con.register("_dc_src", tbl)
    try:
        if infer and text is None and image is None and not (no_text and no_image):
            text, image = _infer_content(
                store, cols, {split_column, label, vector}, src.root, notes, no_text, no_image
            )
        if text is None and image is None and vector is None:
            notes.append(
                "no text or image column: pass --text COL or --image COL (or --vector COL) "
                "so `datacure embed` knows what to embed"
            )
        types = {r[0]: r[1] for r in store.fetchall("DESCRIBE SELECT * FROM _dc_src")}
    finally:
        store.con.unregister("_dc_src")

    # --- reserved names -------------------------------------------------------------------------
    # DuckDB names are case-insensitive: `Label` collides with `label` as surely as `label` does.
    reserved = {r.lower(): r for r in S.RESERVED + (S.CONTENT_HASH,)}
    role_for = {S.SPLIT: split_column, S.LABEL: label}
    for c in cols:
        r = reserved.get(c.lower())
        if c == vector or r is None:
            continue
        if role_for.get(r) == c:
            if c != r:
                renames[c] = r  # `Label` used as the label is stored as `label`
        else:
            renames[c] = f"{c}_source"
    others = {c.lower() for c in cols if c not in renames}
    clash = [v for v in renames.values() if v.lower() in others]
    if clash:
        raise InputError(
            f"{src.name} has columns {', '.join(clash)} and also the reserved names they would "
            "be renamed from",
            "rename the reserved-name columns (row_id, split, label, image_path) in the source",
        )

    # --- vector column --------------------------------------------------------------------------
    vec_dim = None
    if vector is not None:
        tbl, vec_dim = _check_vectors(store, tbl, vector, types[vector], src.name)

    # --- images -------------------------------------------------------------------------------
    if image is not None:
        img_paths = src.checked_images
        if img_paths is None:
            img_paths = _check_images(tbl.column(image), src.root, allow_outside, src.name, image)
        tbl = tbl.append_column(_IMG, img_paths)

    n = tbl.num_rows
    tbl = tbl.append_column(_POS, _np_arrow(np.arange(n, dtype=np.int64)))
    if src.split_values is not None:
        tbl = tbl.append_column(_SPL, src.split_values)
        split_expr = _SPL
    elif split_column is not None:
        # a blank split name counts as missing (as `--split ""` is refused)
        sc = f"CAST({S.quote(split_column)} AS VARCHAR)"
        split_expr = f"CASE WHEN trim({sc}) = '' THEN NULL ELSE {sc} END"
    else:
        split_expr = _sql_str(split)
    source_cols = [c for c in cols if c != vector]
    hash_cols = cols  # every source value, the vector included
    hash_expr = "hash(" + ", ".join(S.quote(c) for c in hash_cols) + ")"

    report = IngestReport(
        {},
        src.name,
        [],
        fmt=src.fmt,
        label_column=stored(label),
        text_column=stored(text),
        image_column=stored(image),
        renamed=dict(renames),
        notes=notes,
    )
    with store.transaction():
        store.con.register("_dc_in", tbl)
        try:
            _write(
                store,
                tbl,
                src,
                report,
                types=types,
                split_expr=split_expr,
                label=label,
                explicit_label=explicit_label,
                no_label=no_label,
                image=image,
                vector=vector,
                vec_dim=vec_dim,
                text=text,
                split_column=split_column,
                renames=renames,
                source_cols=source_cols,
                hash_expr=hash_expr,
                replace=replace,
            )
        finally:
            store.con.unregister("_dc_in")
    return report


def _infer_content(
    store: Store,
    cols: list[str],
    taken: set,
    root: Path,
    notes: list[str],
    no_text: bool = False,
    no_image: bool = False,
) -> tuple[str | None, str | None]:
    """(text, image) columns when exactly one candidate of a kind exists (on a 10k-row sample).

    Image: a string column whose values all end in an image extension and whose files exist
    (the first 50 values checked, relative to `root`): a column of file names with no files
    beside the table is metadata, and a note says so (pass --image COL to insist). Text: a
    string column of mean length >= 10 where most values contain a space. `no_text` /
    `no_image` (`--text none` / `--image none`) switch a kind off."""
    types = {r[0]: r[1] for r in store.fetchall("DESCRIBE SELECT * FROM _dc_src")}
    strs = [c for c in cols if types.get(c) == "VARCHAR" and c not in taken]
    if not strs:
        return None, None
    ext = "|".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    aggs = []
    for c in strs:
        q = S.quote(c)
        aggs += [
            f"avg(length({q}))",
            f"avg(CASE WHEN {q} LIKE '% %' THEN 1.0 ELSE 0.0 END)",
            f"count({q})",
            f"count(*) FILTER (WHERE regexp_matches(lower({q}), '\\.({ext})$'))",
        ]
    row = store.fetchone(f"SELECT {', '.join(aggs)} FROM (SELECT * FROM _dc_src LIMIT 10000)")
    stats = {c: row[4 * i : 4 * i + 4] for i, c in enumerate(strs)}
    named = [c for c, (_, _, nn, ni) in stats.items() if nn and ni == nn]
    images = []
    for c in [] if no_image else named:
        sample = [
            r[0]
            for r in store.fetchall(
                f"SELECT {S.quote(c)} FROM _dc_src WHERE {S.quote(c)} IS NOT NULL LIMIT 50"
            )
        ]
        missing = [v for v in sample if not (root / str(v)).is_file()]
        if missing:
            notes.append(
                f"column {c!r} holds image file names, but {len(missing)} of the first "
                f"{len(sample)} are not files under {root} (e.g. {missing[0]!r}): kept as "
                f"metadata, not images; pass --image {c} if they are images"
            )
        else:
            images.append(c)
    if len(images) > 1:
        raise InputError(
            f"several columns could hold image paths: {', '.join(images)}",
            "pass --image COL (or --image none)",
        )
    if images:
        return None, images[0]
    if no_text:
        return None, None
    texts = [c for c, (ml, sp, nn, _) in stats.items() if nn and ml and ml >= 10 and sp >= 0.5]
    if len(texts) > 1:
        desc = ", ".join(f"{c} (mean {stats[c][0]:.0f} chars)" for c in texts)
        raise InputError(
            f"several columns could be the text: {desc}",
            "pass --text COL to choose one (or --text none)",
        )
    return (texts[0] if texts else None), None


def _check_vectors(store: Store, tbl: pa.Table, col: str, dtype: str, name: str):
    """Validate a vector column (same length everywhere, numbers, no nulls); returns the table
    with the column as list<float32> and the dimension."""
    arr = tbl.column(col)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        # vectors written as text, e.g. "[0.1, 0.2]" in a CSV: parse them in DuckDB
        store.con.register("_dc_vec", pa.table({"v": arr}))
        try:
            parsed = store.arrow("SELECT TRY_CAST(v AS DOUBLE[]) AS v FROM _dc_vec")
        finally:
            store.con.unregister("_dc_vec")
        bad = pc.and_(pc.is_null(parsed.column("v")), pc.is_valid(arr))
        if pc.any(bad).as_py():
            first = np.flatnonzero(bad.to_numpy(zero_copy_only=False))[:_SHOW]
            raise InputError(
                f"--vector {col!r}: values in rows {_rows(first)} are not lists of numbers",
                "write each vector as [x1, x2, ...] or store the column as a list in Parquet",
            )
        arr = parsed.column("v")
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise InputError(
            f"--vector {col!r} is {dtype}, not a list of numbers",
            "point --vector at a list/array column (one vector per row)",
        )
    if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise InputError(f"--vector {col!r} holds {t.value_type}, not numbers", "store numbers")
    # Chunk by chunk, zero-copy: the column can be most of the data (1M x 384 floats = 1.5 GB).
    chunks = list(arr.chunks) if isinstance(arr, pa.ChunkedArray) else [arr]
    nulls = sum(c.null_count for c in chunks)
    if nulls:
        isnull = np.concatenate([c.is_null().to_numpy(zero_copy_only=False) for c in chunks])
        raise InputError(
            f"--vector {col!r} is empty in {nulls} rows "
            f"(rows {_rows(np.flatnonzero(isnull)[:_SHOW])})",
            "drop those rows or fill in their vectors",
        )
    lengths = np.concatenate(
        [pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in chunks]
    )
    uniq, counts = np.unique(lengths, return_counts=True)
    if len(uniq) > 1:
        common = uniq[np.argmax(counts)]
        odd = np.flatnonzero(lengths != common)
        desc = ", ".join(f"{int(u)} ({int(c)} rows)" for u, c in zip(uniq[:5], counts[:5]))
        raise InputError(
            f"--vector {col!r} has vectors of mixed lengths: {desc}; "
            f"e.g. rows {_rows(odd[:_SHOW])} "
            f"are not {int(common)}-long",
            "give every row a vector of the same length (one model for all rows)",
        )
    dim = int(uniq[0])
    if dim == 0:
        raise InputError(f"--vector {col!r} holds empty vectors", "store non-empty vectors")
    fixed, base = [], 0
    for c in chunks:
        flat = pc.list_flatten(c)
        if flat.type != pa.float32():
            flat = flat.cast(pa.float32())
        values = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32)
        step = 1 << 24  # check in blocks: a mask of the whole chunk would cost a quarter of it
        if not all(np.isfinite(values[i : i + step]).all() for i in range(0, len(values), step)):
            bad_rows = base + np.unique(np.flatnonzero(~np.isfinite(values)) // dim)[:_SHOW]
            raise InputError(
                f"--vector {col!r} holds NaN or infinite values (rows {_rows(bad_rows)})",
                "fix or drop those rows",
            )
        fixed.append(pa.FixedSizeListArray.from_arrays(_np_arrow(values), dim))
        base += len(c)
    i = tbl.column_names.index(col)
    return tbl.set_column(i, col, pa.chunked_array(fixed, pa.list_(pa.float32(), dim))), dim


def _check_images(col, root: Path, allow_outside: bool, name: str, image: str) -> pa.Array:
    """Resolve, confine and verify every image file (Pillow, in a thread pool).

    Returns the absolute resolved paths. Refuses paths that leave `root` (`..`, absolute,
    symlinks out) unless `allow_outside`; missing, unreadable, corrupt or over-large images
    (decompression bombs) are an error naming the first few."""
    from PIL import Image

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        first = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[:_SHOW]
        raise InputError(
            f"image column {image!r} is empty in {arr.null_count} rows (rows {_rows(first)})",
            "drop those rows or fill in their image paths",
        )
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise InputError(
            f"image column {image!r} is {arr.type}, not file paths",
            "point --image at a column of image file paths (relative to the table's folder)",
        )
    rels = arr.to_pylist()
    uniq = list(dict.fromkeys(rels))
    root_real = os.path.realpath(root)
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

    def check(rel: str) -> tuple[str, str | None]:
        full = os.path.join(root_real, os.path.expanduser(rel))
        real = os.path.realpath(full)
        inside = real == root_real or real.startswith(root_real + os.sep)
        if not inside and not allow_outside:
            return real, "outside"
        if not os.path.isfile(real):
            return real, "missing"
        try:
            with Image.open(real) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    return real, f"too large ({w}x{h} pixels)"
                im.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads it all
                im.load()
        except Image.DecompressionBombError as exc:
            return real, f"too large ({exc})"
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
            return real, f"corrupt ({type(exc).__name__}: {str(exc)[:80]})"
        return real, None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        workers = min(16, 4 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = dict(zip(uniq, pool.map(check, uniq)))
    bad = {r: p for r, (_, p) in results.items() if p is not None}
    if bad:
        kinds: dict[str, list[str]] = {}
        for r, p in bad.items():
            kind, _, detail = p.partition(" (")
            kinds.setdefault(kind, []).append(f"{r} ({detail}" if detail else r)
        parts = []
        for kind, files in kinds.items():
            shown = ", ".join(files[:_SHOW]) + (" ..." if len(files) > _SHOW else "")
            parts.append(f"{len(files)} {kind}: {shown}")
        fixes = []
        if "outside" in kinds:
            fixes.append(
                f"keep image paths inside {root_real} (no '..', absolute paths or symlinks out), "
                "or pass --allow-outside-paths if you trust the table"
            )
        if "missing" in kinds:
            fixes.append(f"image paths are relative to {root_real}: check them")
        if "corrupt" in kinds:
            fixes.append("re-export or drop the unreadable images")
        if "too large" in kinds:
            fixes.append(
                f"images over {MAX_IMAGE_PIXELS} pixels are refused as possible decompression "
                "bombs: resize them, or raise DATACURE_MAX_IMAGE_PIXELS if you trust them"
            )
        raise InputError(
            f"{len(bad)} of {len(uniq)} images in {name} (column {image!r}) are unusable: "
            + "; ".join(parts),
            "; ".join(fixes),
        )
    resolved = {r: real for r, (real, _) in results.items()}
    return pl.Series(S.IMAGE_PATH, [resolved[r] for r in rels], dtype=pl.Utf8).to_arrow()


def _write(
    store: Store,
    tbl: pa.Table,
    src: _Source,
    report: IngestReport,
    *,
    types: dict,
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
    q = S.quote
    # --- splits present, clashes --------------------------------------------------------------
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

    # --- labels: nulls in a labelled split ----------------------------------------------------
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

    # --- the rows to insert -------------------------------------------------------------------
    select = [f"{_RID} AS {S.ROW_ID}", f"{split_expr} AS {S.SPLIT}"]
    if label is not None and unlabelled != set(counts):
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

    # --- row ids: keep unchanged rows' ids on replace ------------------------------------------
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
    rid_expr = select[0].rsplit(" AS ", 1)[0]
    body = f"SELECT {', '.join(select)} FROM _dc_in"
    desc = store.fetchall(f"DESCRIBE {body}")
    new_types = {r[0]: r[1] for r in desc}
    if S.LABEL not in new_types:
        new_types[S.LABEL] = None

    # --- delete replaced splits, retire ids -------------------------------------------------
    if clash:
        in_list = ", ".join(_sql_str(s) for s in clash)
        store.execute(f"DELETE FROM {S.SAMPLES} WHERE split IN ({in_list})")
        _retire(store, retired)
        store.execute(f"DELETE FROM {S.SOURCES} WHERE split IN ({in_list})")

    # --- create or extend samples, then insert ---------------------------------------------
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

    # --- user vectors -----------------------------------------------------------------------
    if vector is not None:
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

    # --- bookkeeping: meta and sources ----------------------------------------------------------
    st_label = renames.get(label, label) if label else None
    st_text = renames.get(text, text) if text else None
    st_image = renames.get(image, image) if image else None
    datadef.record(
        store,
        text=st_text,
        image=st_image,
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
        "replaced": bool(clash),
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
                st_text,
                st_image,
                str(src.root) if image else None,
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
    store.con.register("_dc_retired", pa.table({S.ROW_ID: _np_arrow(retired.astype(np.int64))}))
    try:
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
    finally:
        store.con.unregister("_dc_retired")


def _is_view(store: Store, name: str) -> bool:
    return bool(
        store.scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ? "
            "AND table_type = 'VIEW'",
            [name],
        )
    )
