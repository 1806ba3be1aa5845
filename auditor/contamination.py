"""`contamination`: rows that contain (or rephrase) items of an evaluation benchmark.

The benchmark is either a split of the store named by `--reference SPLIT` (its rows are then
the benchmark and every other audited row is examined), or a file given with `--benchmark FILE`
(CSV/TSV/Parquet/JSONL/HF folder/image folder, read by the ingest readers; every audited row is
examined). The benchmark's text column is the one named like the store's text column, else its
only string column; for images, the column named like the store's image column (paths relative
to the file's folder).

Text, three tiers, each recorded with its evidence in `details`:

1. n-gram overlap (`ngram_overlap`): texts are normalised (`auditor.textnorm`, the
   lm-evaluation-harness normalisation) and cut into word n-grams, n = 13 as in GPT-3 and
   lm-evaluation-harness's decontamination, or shorter for short benchmarks (GPT-3's rule: the
   5th percentile of item length, clipped to [8, 13]). The overlap of a row with a benchmark
   item is the share of the item's distinct n-grams that occur in the row; the row keeps its
   best item, and is flagged at `min_ngram_overlap` (default 0.2). n-grams that occur in more
   than 1% of the benchmark's items (boilerplate such as a shared instruction) are ignored. The
   rows are streamed in chunks of `chunk_rows` and n-grams are hashed to uint64, so memory is
   set by the benchmark and the chunk, not by the number of rows examined.
2. embedding similarity (`similarity`): cosine similarity of the row to its nearest benchmark
   item, flagged at `similarity_threshold`. By default the threshold is calibrated on the
   benchmark itself: the `calibration_quantile` (0.99) quantile of each benchmark item's
   similarity to its nearest *other* item. A clean row's nearest-item similarity is a maximum
   over the same number of benchmark items as a benchmark item's, so about 1% of clean rows
   from the benchmark's own distribution pass it (fewer from anywhere else). Clipped to
   [`min_similarity`, `max_similarity`].
3. LLM judge (`judge`, optional, with `--judge-url`): pairs whose similarity lies between a
   lower bound (the `judge_quantile` quantile of the same calibration, default 0.9) and the
   tier-2 threshold, and that no other tier flagged, are sent (most similar first, at most
   `max_judge_calls`) to an OpenAI-compatible `POST {judge_url}/chat/completions`, asking
   whether the two texts are the same item rephrased, as lm-sys/llm-decontaminator does. The
   API key is read from the environment variable named by `--judge-key-env` and is never
   stored or logged.

Images: tier 1 is a perceptual hash (pHash, 64-bit DCT hash; `phash_distance` is the Hamming
distance to the nearest benchmark image, flagged at `max_phash_distance`), tier 2 the embedding.

`details` per examined row: `tier` (lowest tier that flagged, null if clean), `tiers`,
`benchmark_index` (positions of the implicated benchmark items: tier-1 best item, then nearest
item), `benchmark_row_ids` (their row_ids when the benchmark is a split, else null),
`ngram_overlap` (text) or `phash_distance` (images), `similarity`, `judge` (true/false/null).
Score: each tier's evidence mapped so its threshold sits at 0.5 (1 = no evidence, 0 = an exact
copy); the row's score is the lowest; a judge's yes puts it below 0.5. Dataset score:
1 - share of examined rows flagged.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from pydantic import Field

from ..store import schema as S
from ..store.errors import DatacureError, InputError
from .base import Auditor, AuditResult, Params, register
from .textnorm import gpt3_ngram_size, ngram_hashes, token_counts, token_hashes

if TYPE_CHECKING:
    from .context import AuditContext


# --- perceptual image hashes -----------------------------------------------------------------
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (n x n): D @ x is the DCT of x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def _pack64(bits: np.ndarray) -> np.ndarray:
    """[n, 64] booleans -> uint64 [n]."""
    return np.packbits(bits.reshape(len(bits), 64), axis=1).view(">u8").ravel().astype(np.uint64)


def image_hashes(paths) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pixel hash, pHash, dHash, readable) per image path: uint64, uint64, uint64, bool.

    pixel hash: of the decoded RGB pixels and size (a re-encoded file hashes the same).
    pHash: 32x32 greyscale, 2-D DCT, the 8x8 lowest frequencies against their median.
    dHash: 9x8 greyscale, each pixel brighter than its left neighbour.
    Unreadable files get zeros and readable=False.
    """
    import hashlib

    from PIL import Image

    n = len(paths)
    pix = np.zeros(n, np.uint64)
    ok = np.zeros(n, bool)
    small = np.zeros((n, 32, 32), np.float32)
    tiny = np.zeros((n, 8, 9), np.float32)
    for i, p in enumerate(paths):  # one decode per file: unavoidable I/O
        if p is None:
            continue
        try:
            with Image.open(p) as im:
                rgb = im.convert("RGB")
                arr = np.asarray(rgb)
                grey = rgb.convert("L")
                small[i] = np.asarray(grey.resize((32, 32), Image.Resampling.LANCZOS))
                tiny[i] = np.asarray(grey.resize((9, 8), Image.Resampling.LANCZOS))
        except (OSError, ValueError, SyntaxError):  # PIL's errors for corrupt or missing files
            continue
        h = hashlib.blake2b(str(arr.shape).encode(), digest_size=8)
        h.update(np.ascontiguousarray(arr).tobytes())
        pix[i] = np.frombuffer(h.digest(), ">u8")[0]
        ok[i] = True
    d = _dct_matrix(32)
    dct = np.einsum("ij,njk,lk->nil", d, small, d)[:, :8, :8].reshape(n, 64)
    phash = _pack64(dct > np.median(dct, axis=1, keepdims=True))
    dhash = _pack64(tiny[:, :, 1:] > tiny[:, :, :-1])
    phash[~ok] = 0
    dhash[~ok] = 0
    return pix, phash, dhash, ok


def nearest_hamming(queries: np.ndarray, base: np.ndarray, chunk: int = 4096):
    """(distance, index) of the nearest `base` hash (uint64) to each query, by Hamming."""
    dist = np.full(len(queries), 65, np.int64)
    idx = np.full(len(queries), -1, np.int64)
    if not len(base):
        return dist, idx
    for i in range(0, len(queries), chunk):
        x = np.bitwise_count(queries[i : i + chunk, None] ^ base[None, :])
        j = x.argmin(axis=1)
        idx[i : i + chunk] = j
        dist[i : i + chunk] = x[np.arange(len(j)), j]
    return dist, idx


FILTER_BITS = 24  # prefilter of the n-gram lookup: 16 MB


# --- tier 1: n-gram index ----------------------------------------------------------------------
class NgramIndex:
    """The benchmark's n-grams as a sorted uint64 array, each with the item it belongs to.

    Memory is O(benchmark n-grams); `match` takes any chunk of texts and holds only that
    chunk's n-grams, so streaming the rows keeps memory flat in their number."""

    def __init__(self, texts, n: int | None = None, boilerplate_share: float = 0.01):
        counts = token_counts(texts)
        self.num_items = len(counts)
        self.n = int(n or gpt3_ngram_size(counts))
        tok, doc = token_hashes(texts)
        g, owner = ngram_hashes(tok, doc, self.n)
        # distinct (n-gram, item) pairs
        order = np.lexsort((owner, g))
        g, owner = g[order], owner[order]
        first = np.ones(len(g), bool)
        first[1:] = (g[1:] != g[:-1]) | (owner[1:] != owner[:-1])
        g, owner = g[first], owner[first]
        # n-grams of more than 1% of the items (and at least 3) are boilerplate
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        items_per = np.diff(np.r_[starts, len(g)])
        limit = max(3, int(boilerplate_share * self.num_items))
        keep_gram = items_per <= limit
        keep = np.repeat(keep_gram, items_per)
        self.num_boilerplate = int((~keep_gram).sum())
        g, owner = g[keep], owner[keep]
        self.item_ngrams = np.bincount(owner, minlength=self.num_items).astype(np.int64)
        # one owner per n-gram for the lookup (the first); shared n-grams count for it
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if len(g) else np.zeros(0, int)
        self.grams = g[starts]
        self.owner = owner[starts]
        # a byte per 2^-24 of the hash space: most row n-grams miss it, so only the few that
        # hit are binary-searched (a gather is ~50x cheaper than a search in a large array)
        self._filter = np.zeros(1 << FILTER_BITS, dtype=bool)
        self._filter[self.grams >> np.uint64(64 - FILTER_BITS)] = True

    def match(self, texts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(overlap float [m], best item int [m] (-1: none), shared n-grams int [m])."""
        m = len(texts)
        overlap = np.zeros(m)
        best = np.full(m, -1, np.int64)
        shared = np.zeros(m, np.int64)
        if not len(self.grams):
            return overlap, best, shared
        tok, doc = token_hashes(texts)
        g, gdoc = ngram_hashes(tok, doc, self.n)
        maybe = self._filter[g >> np.uint64(64 - FILTER_BITS)]
        g, gdoc = g[maybe], gdoc[maybe]
        pos = np.searchsorted(self.grams, g)
        pos[pos == len(self.grams)] = 0
        hit = self.grams[pos] == g
        if not hit.any():
            return overlap, best, shared
        hd, ho, hg = gdoc[hit], self.owner[pos[hit]], g[hit]
        order = np.lexsort((hg, ho, hd))
        hd, ho, hg = hd[order], ho[order], hg[order]
        new = np.r_[True, (hd[1:] != hd[:-1]) | (ho[1:] != ho[:-1]) | (hg[1:] != hg[:-1])]
        hd, ho = hd[new], ho[new]  # distinct (doc, item, n-gram)
        key_start = np.flatnonzero(np.r_[True, (hd[1:] != hd[:-1]) | (ho[1:] != ho[:-1])])
        cnt = np.diff(np.r_[key_start, len(hd)])
        kd, ko = hd[key_start], ho[key_start]
        ratio = cnt / np.maximum(self.item_ngrams[ko], 1)
        # best item per doc: highest ratio (ties: more shared n-grams)
        order = np.lexsort((-cnt, -ratio, kd))
        kd, ko, ratio, cnt = kd[order], ko[order], ratio[order], cnt[order]
        top = np.r_[True, kd[1:] != kd[:-1]]
        overlap[kd[top]] = np.minimum(ratio[top], 1.0)
        best[kd[top]] = ko[top]
        shared[kd[top]] = cnt[top]
        return overlap, best, shared


# --- the benchmark -----------------------------------------------------------------------------
@dataclass
class Benchmark:
    source: str
    texts: np.ndarray | None = None
    image_paths: np.ndarray | None = None
    row_ids: np.ndarray | None = None  # store row_ids when the benchmark is a split
    vectors: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        content = self.texts if self.texts is not None else self.image_paths
        return 0 if content is None else len(content)


def _embedding_model(ctx: AuditContext) -> tuple[str | None, str | None, int | None]:
    for e in ctx.store.embedding_keys():
        if e["key"] == ctx.embedding_key:
            return e.get("model"), e.get("kind"), int(e.get("dim") or 0)
    return None, None, None


def load_benchmark(ctx: AuditContext) -> Benchmark:
    """The benchmark from `--benchmark FILE` or the reference split."""
    path = ctx.options.get("benchmark")
    if path:
        return _benchmark_file(ctx, Path(path))
    frame = _read_split(ctx, ctx.reference)
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


def _read_split(ctx: AuditContext, split: str) -> pl.DataFrame:
    col = ctx.text_column or S.IMAGE_PATH
    return ctx.store.polars(
        f"SELECT row_id, {S.quote(col)} FROM {S.SAMPLES} WHERE split = ? ORDER BY row_id",
        [split],
    )


def _benchmark_file(ctx: AuditContext, path: Path) -> Benchmark:
    from ..store.ingest import read_source

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
    _, _, dim = _embedding_model(ctx)
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
        bench.vectors = _embed(ctx, bench, bench.notes)
    return bench


def _embed(ctx: AuditContext, bench: Benchmark, notes: list[str]) -> np.ndarray | None:
    """Embed the benchmark with the encoder that made the store's embedding (store.embed's
    `embedder_for`, fitted parameters included), so its vectors are comparable."""
    try:
        from ..store.embed import embedder_for
    except ImportError:
        notes.append("store.embed is not available: the benchmark file is not embedded")
        return None
    content = bench.texts if bench.texts is not None else bench.image_paths
    try:
        vec = embedder_for(ctx.store, ctx.embedding_key).encode([str(x) for x in content])
    except (DatacureError, OSError, ValueError, RuntimeError) as exc:
        why = exc.problem if isinstance(exc, DatacureError) else f"{type(exc).__name__}: {exc}"
        notes.append(
            f"cannot embed the benchmark like {ctx.embedding_key!r}: {why}; tier 2 not run"
        )
        return None
    notes.append(f"benchmark embedded like {ctx.embedding_key!r}")
    return np.asarray(vec, dtype=np.float32)


# --- tier 3: LLM judge -------------------------------------------------------------------------
JUDGE_SYSTEM = (
    "You compare two texts for benchmark contamination. Answer with one word: True or False."
)
JUDGE_PROMPT = (
    "Text A is an item of an evaluation benchmark. Text B comes from a training set.\n"
    "Is Text B the same item as Text A, copied, paraphrased, reworded, reordered or translated, "
    "so that a model trained on B would have seen A's problem and answer? Changing only names, "
    "numbers or wording still counts as the same item; a different problem does not.\n\n"
    "Text A:\n{a}\n\nText B:\n{b}\n\nAnswer True or False."
)


def judge_pairs(
    url: str, model: str, key_env: str | None, pairs: list[tuple[str, str]], timeout: float = 60
) -> tuple[list[bool | None], list[str]]:
    """Ask an OpenAI-compatible chat endpoint whether each (benchmark, row) pair is the same
    item. Returns one verdict per pair (None when the call failed) and the distinct errors.
    The key (from `key_env`) goes in the Authorization header only."""
    from concurrent.futures import ThreadPoolExecutor

    endpoint = url.rstrip("/") + "/chat/completions"
    # stripped: a trailing newline would make an invalid header (http.client quotes it)
    key = (os.environ.get(key_env) or "").strip() if key_env else ""
    headers = {"Content-Type": "application/json"}
    if key:
        if not key.isprintable() or not key.isascii():
            raise InputError(
                f"the API key in ${key_env} holds characters an HTTP header cannot carry",
                f"set {key_env} to the key alone (printable ASCII, no line breaks)",
            )
        headers["Authorization"] = f"Bearer {key}"

    def ask(pair: tuple[str, str]) -> tuple[bool | None, str | None]:
        body = {
            "model": model,
            "temperature": 0,
            "max_tokens": 5,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_PROMPT.format(a=pair[0], b=pair[1])},
            ],
        }
        req = urllib.request.Request(
            endpoint, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                out = json.loads(resp.read().decode("utf-8"))
            text = out["choices"][0]["message"]["content"] or ""
        except urllib.error.HTTPError as exc:
            return None, f"HTTP {exc.code} from {endpoint}"
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            return None, f"cannot reach {endpoint}: {getattr(exc, 'reason', exc)}"
        except (ValueError, KeyError, IndexError, TypeError):
            return None, f"{endpoint} did not answer in the OpenAI chat format"
        word = text.strip().strip("*.\"' ").lower()
        if word.startswith(("true", "yes")):
            return True, None
        if word.startswith(("false", "no")):
            return False, None
        return None, f"unexpected judge answer {text.strip()[:40]!r}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(ask, pairs))
    errors = sorted({e for _, e in results if e})
    return [v for v, _ in results], errors


# Above this many (row, benchmark item) pairs per chunk, tier 2 uses an approximate index.
EXACT_PAIRS = 500_000_000


# --- scores ------------------------------------------------------------------------------------
def evidence_score(x: np.ndarray, threshold: float) -> np.ndarray:
    """Map evidence x in [0, 1] (1 = an exact copy) to a score in [0, 1] with the flag threshold
    at 0.5: 1 at no evidence, 0.5 at the threshold, 0 at x = 1."""
    x = np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0)
    thr = float(np.clip(threshold, 1e-6, 1 - 1e-6))
    above = 0.5 * (1.0 - x) / (1.0 - thr)
    below = 0.5 + 0.5 * (thr - x) / thr
    return np.clip(np.where(x >= thr, above, below), 0.0, 1.0)


# --- the auditor -------------------------------------------------------------------------------
@register
class Contamination(Auditor):
    name = "contamination"
    partner_key = "benchmark_row_ids"
    description = "Rows that copy or rephrase items of an evaluation benchmark."
    requires = frozenset()

    class Params(Params):
        ngram: int | None = Field(None, ge=3, le=50)
        min_ngram_overlap: float = Field(0.2, gt=0.0, le=1.0)
        similarity_threshold: float | None = Field(None, gt=0.0, le=1.0)
        calibration_quantile: float = Field(0.99, gt=0.5, lt=1.0)
        judge_quantile: float = Field(0.9, gt=0.0, lt=1.0)
        min_similarity: float = Field(0.8, gt=0.0, le=1.0)
        max_similarity: float = Field(0.97, gt=0.0, le=1.0)
        max_judge_calls: int = Field(200, ge=0)
        max_phash_distance: int = Field(4, ge=0, le=64)
        chunk_rows: int = Field(50_000, ge=100)
        vector_chunk_rows: int = Field(250_000, ge=100)

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if not ctx.text_column and not ctx.image_column:
            return "needs a text or image column"
        if not ctx.options.get("benchmark") and not ctx.reference_given:
            return (
                "needs a benchmark: --benchmark FILE, or --reference SPLIT naming a benchmark "
                "ingested as a split"
            )
        if not ctx.options.get("benchmark") and not self._examined(ctx):
            return f"no audited split besides the benchmark split {ctx.reference!r}"
        return None

    @staticmethod
    def _examined(ctx: AuditContext) -> list[str]:
        if ctx.options.get("benchmark"):
            return list(ctx.splits)
        return [s for s in ctx.splits if s != ctx.reference]

    def audit(self, ctx: AuditContext) -> AuditResult:
        import time

        p = self.params
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        bench = load_benchmark(ctx)
        if not len(bench):
            raise InputError(f"the benchmark {bench.source} has no rows", "check the benchmark")
        timings["load_benchmark"] = time.perf_counter() - t0
        examined = self._examined(ctx)
        text = bench.texts is not None

        t0 = time.perf_counter()
        tier1 = NgramIndex(bench.texts, p.ngram) if text else None
        bhash = image_hashes(bench.image_paths)[1] if not text else None
        thr, lower, calib = self._calibrate(bench)
        timings["index_benchmark"] = time.perf_counter() - t0

        ids = ctx.store.arrow(
            f"SELECT row_id FROM {S.SAMPLES} WHERE split IN ({', '.join('?' for _ in examined)}) "
            "ORDER BY row_id",
            examined,
        )
        row_ids = ids.column("row_id").to_numpy().astype(np.int64)
        n = len(row_ids)
        ev1 = np.zeros(n)  # tier-1 evidence in [0, 1]
        item1 = np.full(n, -1, np.int64)
        extra1 = np.zeros(n, np.int64)  # shared n-grams, or pHash distance
        sim = np.full(n, np.nan)
        item2 = np.full(n, -1, np.int64)
        t_tier1 = 0.0
        for lo in range(0, n, p.chunk_rows):
            chunk = row_ids[lo : lo + p.chunk_rows]
            sl = slice(lo, lo + len(chunk))
            t = time.perf_counter()
            content = _read_chunk(ctx, examined, chunk, text)
            if text:
                ov, it, sh = tier1.match(content)
                ev1[sl], item1[sl], extra1[sl] = ov, it, sh
            else:
                _, ph, _, ok = image_hashes(content)
                dist, it = nearest_hamming(ph, bhash)
                dist[~ok] = 65
                ev1[sl] = np.clip(1.0 - dist / 64.0, 0.0, 1.0)
                item1[sl], extra1[sl] = np.where(ok, it, -1), dist
            t_tier1 += time.perf_counter() - t
        t = time.perf_counter()
        search_info: dict = {}
        if bench.vectors is not None:
            for lo in range(0, n, p.vector_chunk_rows):
                chunk = row_ids[lo : lo + p.vector_chunk_rows]
                s, j = _nearest_benchmark(ctx, bench.vectors, chunk, search_info)
                sim[lo : lo + len(chunk)], item2[lo : lo + len(chunk)] = s, j
        timings["tier2"] = time.perf_counter() - t
        timings["tier1"] = t_tier1

        if text:
            flag1 = ev1 >= p.min_ngram_overlap
            thr1 = p.min_ngram_overlap
        else:
            flag1 = extra1 <= p.max_phash_distance
            thr1 = 1.0 - p.max_phash_distance / 64.0
        has_sim = ~np.isnan(sim)
        flag2 = has_sim & (sim >= thr) if thr is not None else np.zeros(n, bool)
        judge = np.full(n, None, dtype=object)
        judge_info = self._judge(ctx, bench, row_ids, sim, item2, flag1 | flag2, lower, thr, judge)
        flag3 = judge == True  # noqa: E712 - elementwise on an object array

        flagged = flag1 | flag2 | flag3
        score = evidence_score(ev1, thr1)
        if thr is not None:
            score = np.minimum(score, np.where(has_sim, evidence_score(sim, thr), 1.0))
        if flag3.any() and lower is not None:
            band = np.clip((thr - sim) / max(thr - lower, 1e-6), 0.0, 1.0)
            score = np.where(flag3, np.minimum(score, 0.25 + 0.24 * band), score)

        flags = (flag1, flag2, flag3)
        rows = self._rows(row_ids, bench, text, ev1, item1, extra1, sim, item2, judge, flags, score)
        bench_rid = bench.row_ids
        examples = rows.filter(pl.col("is_issue")).head(20)
        info = {
            "benchmark": bench.source,
            "benchmark_rows": len(bench),
            "examined_splits": examined,
            "num_examined": n,
            "num_flagged": int(flagged.sum()),
            "flagged_by_tier": {
                "1": int(flag1.sum()),
                "2": int(flag2.sum()),
                "3": int(flag3.sum()),
                "1_only": int((flag1 & ~flag2).sum()),
                "2_only": int((flag2 & ~flag1).sum()),
            },
            "tier1": (
                {
                    "kind": "ngram",
                    "n": tier1.n,
                    "min_overlap": p.min_ngram_overlap,
                    "benchmark_ngrams": len(tier1.grams),
                    "boilerplate_ngrams_ignored": tier1.num_boilerplate,
                    "items_without_ngrams": int((tier1.item_ngrams == 0).sum()),
                }
                if text
                else {"kind": "phash", "max_distance": p.max_phash_distance}
            ),
            "tier2": (
                {
                    "threshold": thr,
                    "calibrated": p.similarity_threshold is None,
                    **calib,
                    "search": search_info,
                }
                if thr is not None
                else {"skipped": "; ".join(bench.notes) or "no vectors"}
            ),
            "tier3": judge_info,
            "notes": bench.notes,
            "seconds": {k: round(v, 3) for k, v in timings.items()},
            "examples": [
                {
                    "row_id": r["row_id"],
                    "tier": r["tier"],
                    "benchmark_index": r["benchmark_index"],
                    **(
                        {"benchmark_row_ids": r["benchmark_row_ids"]}
                        if bench_rid is not None
                        else {}
                    ),
                }
                for r in examples.to_dicts()
            ],
        }
        return AuditResult(rows, score=1.0 - float(flagged.sum()) / max(n, 1), info=info)

    def _calibrate(self, bench: Benchmark):
        """(tier-2 threshold, judge lower bound, calibration info) from the benchmark's own
        nearest-other-item similarities (or the fixed threshold when given)."""
        from ..store.knn import search

        p = self.params
        if bench.vectors is None:
            return None, None, {}
        calib: dict = {}
        if len(bench.vectors) >= 3:
            idx, dist = search(bench.vectors, bench.vectors, 2)
            own = idx == np.arange(len(idx))[:, None]
            # the nearest other item: column 0 unless that is the item itself
            s = np.where(own[:, 0], 1.0 - dist[:, 1], 1.0 - dist[:, 0]).astype(np.float64)
            q_thr = float(np.quantile(s, p.calibration_quantile))
            q_low = float(np.quantile(s, p.judge_quantile))
            calib = {
                "benchmark_nn_similarity": {
                    "median": float(np.median(s)),
                    f"q{p.judge_quantile:g}": q_low,
                    f"q{p.calibration_quantile:g}": q_thr,
                }
            }
        else:
            q_thr = q_low = p.min_similarity
        if p.similarity_threshold is not None:
            thr = p.similarity_threshold
        else:
            thr = float(np.clip(q_thr, p.min_similarity, p.max_similarity))
        lower = float(min(np.clip(q_low, 0.0, thr), thr))
        calib["judge_band"] = [lower, thr]
        return thr, lower, calib

    def _judge(self, ctx, bench, row_ids, sim, item2, flagged, lower, thr, judge) -> dict:
        """Tier 3: ask the judge about the unflagged pairs in [lower, thr); fills `judge`."""
        p = self.params
        url = ctx.options.get("judge_url")
        if not url:
            return {"skipped": "no --judge-url"}
        if thr is None or lower is None:
            return {"skipped": "tier 3 judges tier-2 pairs; there are no vectors"}
        model = ctx.options.get("judge_model")
        if not model:
            return {"skipped": "--judge-url needs --judge-model"}
        band = ~flagged & ~np.isnan(sim) & (sim >= lower) & (sim < thr) & (item2 >= 0)
        cand = np.flatnonzero(band)
        cand = cand[np.argsort(-sim[cand], kind="stable")][: p.max_judge_calls]
        if not len(cand):
            return {"url": url, "model": model, "calls": 0, "band_rows": 0}
        texts = _texts_for(ctx, row_ids[cand]) if bench.texts is not None else None
        if texts is None:
            return {"skipped": "the judge compares texts; this benchmark holds images"}
        pairs = [(str(bench.texts[item2[i]]), str(t)) for i, t in zip(cand, texts)]
        verdicts, errors = judge_pairs(url, model, ctx.options.get("judge_key_env"), pairs)
        for i, v in zip(cand, verdicts):
            judge[i] = v
        return {
            "url": url,
            "model": model,
            "band_rows": int(band.sum()),
            "calls": len(cand),
            "yes": int(sum(v is True for v in verdicts)),
            "no": int(sum(v is False for v in verdicts)),
            "failed": int(sum(v is None for v in verdicts)),
            "errors": errors[:5],
        }

    @staticmethod
    def _rows(row_ids, bench, text, ev1, item1, extra1, sim, item2, judge, flags, score):
        flag1, flag2, flag3 = flags
        tier = np.where(flag1, 1, np.where(flag2, 2, np.where(flag3, 3, 0)))
        # implicated benchmark items: the one behind the lowest flagging tier first (the
        # n-gram item for tier 1, else the nearest item), then the other when different
        first = np.where(tier == 1, item1, np.where(item2 >= 0, item2, item1))
        second = np.where(first == item1, item2, item1)
        second = np.where(second == first, -1, second)
        pair = np.stack([first, second], axis=1)
        frame = pl.DataFrame(
            {
                "row_id": row_ids,
                "is_issue": tier > 0,
                "score": score.astype(np.float64),
                "tier": pl.Series(np.where(tier > 0, tier, -1)).replace(-1, None).cast(pl.Int8),
                "_f1": flag1,
                "_f2": flag2,
                "_f3": flag3,
                "_a": pair[:, 0],
                "_b": pair[:, 1],
            }
        )
        if bench.row_ids is not None:
            brid = np.asarray(bench.row_ids, dtype=np.int64)
            frame = frame.with_columns(
                pl.Series("_ra", np.where(pair[:, 0] >= 0, brid[pair[:, 0]], -1)),
                pl.Series("_rb", np.where(pair[:, 1] >= 0, brid[pair[:, 1]], -1)),
            )
        else:
            frame = frame.with_columns(pl.lit(-1).alias("_ra"), pl.lit(-1).alias("_rb"))
        evidence = (
            {"ngram_overlap": np.round(ev1, 6)}
            if text
            else {"phash_distance": pl.Series(np.where(extra1 <= 64, extra1, -1)).replace(-1, None)}
        )
        frame = frame.with_columns(
            pl.concat_list(
                pl.when(pl.col("_f1")).then(pl.lit(1)),
                pl.when(pl.col("_f2")).then(pl.lit(2)),
                pl.when(pl.col("_f3")).then(pl.lit(3)),
            )
            .list.drop_nulls()
            .alias("tiers"),
            pl.concat_list("_a", "_b").list.filter(pl.element() >= 0).alias("benchmark_index"),
            (
                pl.concat_list("_ra", "_rb").list.filter(pl.element() >= 0)
                if bench.row_ids is not None
                else pl.lit(None, dtype=pl.List(pl.Int64))
            ).alias("benchmark_row_ids"),
            **{k: pl.Series(v) for k, v in evidence.items()},
            similarity=pl.Series(np.round(sim, 6)).fill_nan(None),
            judge=pl.Series(judge.tolist(), dtype=pl.Boolean),
        )
        return frame.drop("_f1", "_f2", "_f3", "_a", "_b", "_ra", "_rb")


def _read_chunk(ctx: AuditContext, splits: list[str], chunk: np.ndarray, text: bool):
    """Text (or image paths) of the rows in `chunk` (sorted row_ids), one bounded query."""
    col = ctx.text_column if text else S.IMAGE_PATH
    frame = ctx.store.polars(
        f"SELECT row_id, {S.quote(col)} AS c FROM {S.SAMPLES} "
        f"WHERE row_id BETWEEN ? AND ? AND split IN ({', '.join('?' for _ in splits)}) "
        "ORDER BY row_id",
        [int(chunk[0]), int(chunk[-1]), *splits],
    )
    if text:
        return frame["c"].cast(pl.Utf8).fill_null("")
    return frame["c"].to_numpy()


def _texts_for(ctx: AuditContext, row_ids: np.ndarray) -> list[str]:
    import pyarrow as pa

    ctx.store.con.register(
        "_dc_judge_ids", pa.table({"row_id": pa.array(row_ids.astype(np.int64))})
    )
    try:
        frame = ctx.store.polars(
            f"SELECT s.row_id, s.{S.quote(ctx.text_column)} AS t FROM {S.SAMPLES} s "
            "JOIN _dc_judge_ids USING (row_id)"
        )
    finally:
        ctx.store.con.unregister("_dc_judge_ids")
    got = dict(zip(frame["row_id"].to_list(), frame["t"].cast(pl.Utf8).fill_null("").to_list()))
    return [got.get(int(r), "") for r in row_ids]


def _nearest_benchmark(ctx: AuditContext, bench_vec: np.ndarray, chunk: np.ndarray, info: dict):
    """(cosine similarity, index) of the nearest benchmark item to each row of `chunk`; NaN and
    -1 for rows without a vector. Vectors are read for the chunk's row_id range only.

    Exact search while rows x benchmark items stay below `EXACT_PAIRS`; above it, store.knn's
    adaptive IVF (recall@1 checked against exact search on a sample, exact as the fallback):
    a near copy is far closer to its item than anything else, so it is the easiest case for an
    approximate index."""
    from ..store.knn import knn_search

    table = S.quote(S.embedding_table(ctx.embedding_key))
    tbl = ctx.store.arrow(
        f"SELECT row_id, vector FROM {table} WHERE row_id BETWEEN ? AND ? ORDER BY row_id",
        [int(chunk[0]), int(chunk[-1])],
    )
    sim = np.full(len(chunk), np.nan)
    idx = np.full(len(chunk), -1, np.int64)
    rid = tbl.column("row_id").to_numpy()
    if not len(rid):
        return sim, idx
    col = tbl.column("vector").combine_chunks()
    vec = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(rid), -1)
    del tbl, col
    pos = np.searchsorted(rid, chunk)
    pos[pos == len(rid)] = 0
    have = rid[pos] == chunk
    if have.any():
        q = vec[pos[have]]
        del vec
        kind = "ivf" if len(q) * len(bench_vec) > EXACT_PAIRS else "flat"
        g = knn_search(bench_vec, q, 1, index=kind, seed=ctx.seed)
        sim[have] = 1.0 - g.distances[:, 0].astype(np.float64)
        idx[have] = g.indices[:, 0]
        info["index"] = g.index_kind
        info["recall_at_1"] = round(float(g.recall), 4)
        info["seconds"] = round(info.get("seconds", 0.0) + g.seconds, 3)
    return sim, idx
