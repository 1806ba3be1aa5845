"""Reading a source into Arrow: CSV, TSV, Parquet (a file or a folder of files), JSONL/JSON, a
Hugging Face `save_to_disk` folder (a `DatasetDict` becomes splits), an image folder
(`root/<class>/*` or `root/<split>/<class>/*`), or an in-memory table. Files are read by DuckDB
in bulk; a reader's error becomes an `InputError` that names the problem and the fix.
"""

from __future__ import annotations

import difflib
import gzip
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

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
# First words of a file name taken as the split name when neither --split nor --split-column is
# given.
SPLIT_STEMS = ("train", "test", "val", "valid", "validation", "dev", "eval")


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
