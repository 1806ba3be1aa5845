"""`embed()`: fills `embeddings_<key>` with the vectors of the text or image column.

It streams the rows still missing a vector (an anti-join on `row_id`) in chunks of
`CHUNK_ROWS` (bounded memory: never the whole column), encodes them and appends each chunk in
its own transaction: an interrupted run keeps whole chunks only and a rerun resumes where it
stopped. The GPU is used when torch sees one; on a CPU, text models run at most
`CPU_FORWARD_BATCH` texts per forward pass (`store/embedders.py`).

The encoders, and how a model is found and loaded, are in `store/embedders.py`; the names other
layers import from here (`load_embedder`, `embedder_for`, ...) stay importable from this module.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import schema as S
from .db import Store, capped_memory
from .embedders import (  # noqa: F401 - DEFAULT_TEXT_MODEL, embedder_for: re-exported
    DEFAULT_TEXT_MODEL,
    PIXEL_PCA,
    Embedder,
    PixelPCAEmbedder,
    _cached_clip,
    embedder_for,
    load_embedder,
    load_pixels,
)
from .errors import InputError
from .progress import progress_bar

PCA_FIT_ROWS = 5000  # images (a seeded sample) the pixel-PCA fallback is fitted on
CHUNK_ROWS = 4096  # rows fetched, encoded and committed together
EMBED_MEMORY_LIMIT = 256 * 2**20  # DuckDB's memory limit while embedding (bytes)


# --- embed() -------------------------------------------------------------------------------------
@dataclass
class EmbedReport:
    key: str
    model: str
    column: str
    dim: int
    embedded: int
    skipped: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"embedded {self.embedded} rows into {S.embedding_table(self.key)} "
            f"({self.model}, {self.dim}-d, column {self.column}) in {self.seconds:.1f} s"
            + (f", {self.rate:.0f} rows/s" if self.embedded else ""),
        ]
        if self.skipped:
            lines.append(f"{self.skipped} rows already had a vector and were skipped")
        lines += self.notes
        return "\n".join(lines)


def _model_short(name: str) -> str:
    return Path(name.rstrip("/")).name if os.sep in name or "/" in name else name


def embed(
    store: Store,
    model: str | None = None,
    column: str | None = None,
    batch_size: int = 256,
    device: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    limit: int | None = None,
) -> EmbedReport:
    """Embed the text or image column of every row that has no vector yet.

    `batch_size` rows go through the model at once; `chunk_rows` rows are read, encoded and
    committed together (one transaction each). `limit` caps the rows embedded in this call (the
    rest stay for a rerun). Images without `model` use a CLIP-family model from the Hugging Face
    cache when there is one, else the pixel-PCA fallback, fitted here on up to 5,000 images."""
    store.require_samples()
    t0 = time.perf_counter()
    if batch_size < 1 or chunk_rows < 1:
        raise InputError(f"--batch-size {batch_size}", "give a positive number of rows per batch")
    column, kind = embed_target(store, column)
    source = S.IMAGE_PATH if kind == "image" else column
    notes: list[str] = []

    if kind == "image":
        _require_image_paths(store)
    emb, name, key = _choose_model(store, model, kind, column, device, notes)
    exists = key in [e["key"] for e in store.embedding_keys()]
    todo, skipped = _rows_without_vector(store, key, exists)
    if limit is not None:
        todo = todo[: int(limit)]

    if emb is None:  # first image embedding: fit the fallback on a sample, say so
        emb = _fit_pixel_pca(store, key, column, source, notes)
        exists = True
    if emb.is_fallback:
        notes.append(
            "images embedded with the pixel-PCA FALLBACK (32x32 RGB pixels, "
            f"{emb.dim} principal components): colour and layout, not semantics; no CLIP "
            "model was given or found in the Hugging Face cache: pass --model with a CLIP "
            "folder for semantic image embeddings"
        )
    with store.transaction():
        if not exists:
            store.register_embedding(key, emb.dim, name, column, kind, True, emb.info())
        # the embedding just made is what later audits use unless told otherwise (--embedding)
        store.meta_set("default_embedding", key)

    done = 0
    with (
        capped_memory(store, EMBED_MEMORY_LIMIT),
        progress_bar(len(todo), f"embedding {column} ({_model_short(name)})") as bar,
    ):
        for start in range(0, len(todo), chunk_rows):
            ids = todo[start : start + chunk_rows]
            items = _fetch(store, ids, source)
            vec = emb.encode(items, batch_size=batch_size)
            with store.transaction():
                store.append_embeddings(key, ids, vec)
            done += len(ids)
            bar.advance(len(ids))
    return EmbedReport(key, name, column, emb.dim, done, skipped, time.perf_counter() - t0, notes)


def _require_image_paths(store: Store) -> None:
    """Every row must have an image path before images are embedded."""
    missing = store.scalar(f"SELECT count(*) FROM {S.SAMPLES} WHERE {S.IMAGE_PATH} IS NULL")
    if missing:
        raise InputError(
            f"{missing} rows of samples have no image path",
            "re-ingest them with an image, or delete them, then embed again",
        )


def _rows_without_vector(store: Store, key: str, exists: bool) -> tuple[np.ndarray, int]:
    """(row ids with no vector in embedding `key` yet, sorted; how many rows already have one)."""
    table = S.quote(S.embedding_table(key))
    todo_sql = (
        f"SELECT row_id FROM {S.SAMPLES} "
        + (f"WHERE row_id NOT IN (SELECT row_id FROM {table}) " if exists else "")
        + "ORDER BY row_id"
    )
    todo = store.execute(todo_sql).fetchnumpy()[S.ROW_ID].astype(np.int64)
    total = int(store.scalar(f"SELECT count(*) FROM {S.SAMPLES}"))
    return todo, total - len(todo)


def embed_target(store: Store, column: str | None) -> tuple[str, str]:
    """The column to embed and its kind ("image" or "text"): the one asked for (not a column
    of vectors or structs), else the store's image column, else its text column."""
    image_col = store.image_column()
    text_col = store.text_column()
    types = dict(store.columns(S.SAMPLES))
    cols = set(types)
    if column:
        if column not in cols:
            raise InputError(
                f"no column {column!r} in samples", f"choose one of: {', '.join(sorted(cols))}"
            )
        kind = "image" if column in (image_col, S.IMAGE_PATH) else "text"
        if kind == "text" and (types[column].endswith("]") or types[column].startswith("STRUCT")):
            raise InputError(
                f"column {column!r} holds {types[column]} values, not text",
                f"to use precomputed vectors, ingest them with --vector {column}",
            )
        return column, kind
    if image_col:
        return image_col, "image"
    if text_col:
        return text_col, "text"
    raise InputError(
        "the store has no text or image column to embed",
        "for a table of precomputed vectors, ingest them as the embedding with "
        "`datacure ingest SOURCE --vector COL` (no embed step needed); otherwise re-ingest "
        "with --text COL or --image COL, or pass --column COL",
    )


def _choose_model(store: Store, model, kind: str, column: str, device, notes: list) -> tuple:
    """(embedder, name, key): for images without `model`, a CLIP-family model from the HF
    cache, else the pixel-PCA fallback (its embedder loaded from the store, or None when it is
    still to be fitted); otherwise the named (or default) model."""
    clip = _cached_clip(device) if kind == "image" and not model else None
    if kind == "image" and not model and clip is None:
        name = PIXEL_PCA
        key = S.sanitize_key(name, column)
        emb: Embedder | None = None
        if key in [e["key"] for e in store.embedding_keys()]:
            emb = PixelPCAEmbedder.load(store, key)
    elif clip is not None:
        emb, name = clip, clip.name
        key = S.sanitize_key(_model_short(name), column)
        notes.append(f"images embedded with {name}, a CLIP-family model from the HF cache")
    else:
        emb = load_embedder(model, kind, device)
        name = emb.name
        key = S.sanitize_key(_model_short(name), column)
    return emb, name, key


def _fit_pixel_pca(store: Store, key: str, column: str, source: str, notes: list):
    """Fit the pixel-PCA fallback on up to PCA_FIT_ROWS images (seeded sample), and register
    it with its table in one transaction."""
    rng = np.random.default_rng(0)
    every = store.execute(f"SELECT row_id FROM {S.SAMPLES}").fetchnumpy()[S.ROW_ID]
    sample = np.sort(rng.choice(every, size=min(len(every), PCA_FIT_ROWS), replace=False))
    paths = _fetch(store, sample, source)
    emb = PixelPCAEmbedder.fit(load_pixels(paths))
    with store.transaction():
        store.register_embedding(key, emb.dim, PIXEL_PCA, column, "image", True, emb.info())
        emb.save(store, key)
    notes.append(f"pixel-PCA fitted on {len(sample)} images, kept in table pca_{key}")
    return emb


def _fetch(store: Store, ids: np.ndarray, column: str) -> list:
    """Values of `column` for the given row ids, in the same (sorted) order."""
    tbl = pa.table({S.ROW_ID: pa.array(np.asarray(ids, dtype=np.int64))})
    with store.registered("_dc_emb_ids", tbl):
        res = store.arrow(
            f"SELECT s.{S.quote(column)} AS v FROM {S.SAMPLES} s JOIN _dc_emb_ids USING (row_id) "
            "ORDER BY s.row_id"
        )
    return res.column("v").to_pylist()
