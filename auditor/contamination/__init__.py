"""`contamination`: rows that contain, rephrase or translate items of an evaluation benchmark.

The benchmark is a split of the store named by `--reference SPLIT` (its rows are then the
benchmark and every other audited row is examined), or a file given with `--benchmark FILE`
(every audited row is examined); see `benchmark` for how it is read, embedded (once: the vectors
are cached in the store) and how long items are cut into chunks.

Text, three tiers, each recorded with its evidence in `details`:

1. n-gram overlap (`ngram_overlap`, module `ngrams`): the share of a benchmark item's distinct
   word n-grams (13, or GPT-3's rule for short benchmarks; the whole item for items shorter
   than that) that occur in the row, for the row's best item, each candidate item scored by
   its own n-grams; flagged at `min_ngram_overlap` (0.2). Boilerplate n-grams (in more than
   max(`boilerplate_min_items`, `boilerplate_share` x items) items) are ignored.
2. embedding similarity (`similarity`, module `similarity`): cosine similarity of the row to its
   nearest benchmark item (any chunk of it), flagged at a threshold calibrated on the examined
   rows' own best similarities and on the benchmark's nearest-other-item similarities with
   text-sharing items left out (the lower of the two; `info.tier2` shows both).
3. LLM judge (`judge`, module `judge`, with `--judge-url`): the unflagged rows ranked by
   similarity, from the threshold down to `judge_margin` below it, most similar first, at most
   `max_judge_calls`, are sent to an OpenAI-compatible endpoint with their nearest item.

Attribution: `benchmark_index` names the implicated items, the named one first: tier 1's best
item (highest overlap by its own n-grams; a verbatim copy names its own item at 1.0), then the
other items the same evidence points to (items sharing a passage come as a set), then tier 2's
item. Tier 2 names, among the items within `attribution_margin` of the best similarity, the one
whose distinctive words the row covers best.

Languages: a cheap script and function-word check (`textnorm.detect_languages`) of the benchmark
and of a sample of the rows; when either holds non-English text and the embedding model is not
a known multilingual one, a warning says that translations cannot be found and names the
remedy (embed with a local multilingual model, `datacure embed --model PATH`). With a
multilingual model, a translation is found by tier 2 like a rephrasing.

Images: tier 1 is a perceptual hash (pHash, 64-bit DCT hash; `phash_distance` is the Hamming
distance to the nearest benchmark image, flagged at `max_phash_distance`), tier 2 the embedding.

`details` per examined row: `tier` (lowest tier that flagged, null if clean), `tiers`,
`benchmark_index`, `benchmark_row_ids` (their row_ids when the benchmark is a split, else null),
`ngram_overlap` (text) or `phash_distance` (images), `similarity`, `judge` (true/false/null).
Score: each tier's evidence mapped so its threshold sits at 0.5 (1 = no evidence, 0 = an exact
copy); the row's score is the lowest; a judge's yes puts it below 0.5. Dataset score:
1 - share of examined rows flagged. `info.warnings` lists what the user should act on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from pydantic import Field

from ...store import schema as S
from ...store.errors import InputError
from ..base import DROP, Auditor, AuditResult, Params, RepairAction, register
from ..textnorm import detect_languages
from . import similarity as sim_mod
from .attribution import (
    attribute_nearest,
    attribute_sets,
    collect_sets,
    named_items,
    text_sharing_pairs,
)
from .benchmark import Benchmark, embedding_model, load_benchmark
from .images import image_hashes, nearest_hamming
from .judge import judge_pairs
from .ngrams import NgramIndex
from .per_row import combined_score, evidence_score, examples, result_rows

if TYPE_CHECKING:
    from ..context import AuditContext

__all__ = [
    "Benchmark",
    "Contamination",
    "NgramIndex",
    "evidence_score",
    "image_hashes",
    "judge_pairs",
    "nearest_hamming",
]

# Words in a model's name that mark it multilingual (LaBSE, multilingual MiniLM/mpnet/E5,
# XLM-R, mBERT, distiluse, BGE-M3, LASER, ...).
MULTILINGUAL_MARKERS = (
    "multilingual", "labse", "xlm", "mbert", "distiluse", "bge-m3", "laser", "muse", "mdeberta",
    "mt5", "m-e5", "me5",
)  # fmt: skip
LANGUAGE_SAMPLE = 20_000  # examined rows checked for their language


def is_multilingual(model: str | None) -> bool:
    name = (model or "").lower()
    return any(m in name for m in MULTILINGUAL_MARKERS)


@dataclass
class _Tier1:
    """Tier 1's evidence per examined row (see `Contamination._tier1`)."""

    index: NgramIndex | None  # the benchmark's n-gram index (text)
    weights: sim_mod.WordWeights | None  # distinctive-word weights (text)
    evidence: np.ndarray  # in [0, 1], 1 = a copy
    item: np.ndarray  # the named item (-1: none)
    extra: np.ndarray  # shared n-grams, or pHash distance
    sets: pl.DataFrame | None  # other items with the same evidence


@dataclass
class _Tier2:
    """Tier 2's candidates per examined row and the threshold (see `Contamination._tier2`)."""

    top_sim: np.ndarray  # [rows, candidates] similarities, nan where none
    top_item: np.ndarray  # [rows, candidates] items, -1 where none
    threshold: float | None  # None: no vectors
    calib: dict
    search_info: dict


@register
class Contamination(Auditor):
    name = "contamination"
    details = {"tier": pl.Int8, "similarity": pl.Float64}
    partner_key = "benchmark_row_ids"
    repair = RepairAction(
        DROP,
        planned=lambda p: p.contamination,
        evidence={"tier": "VARCHAR", "similarity": "FIRST DOUBLE"},
        priority=20,
    )
    description = "Rows that copy, rephrase or translate items of an evaluation benchmark."
    requires = frozenset()

    class Params(Params):
        ngram: int | None = Field(None, ge=3, le=50)
        min_ngram_overlap: float = Field(0.2, gt=0.0, le=1.0)
        boilerplate_share: float = Field(0.01, gt=0.0, le=1.0)
        boilerplate_min_items: int = Field(20, ge=1)
        similarity_threshold: float | None = Field(None, gt=0.0, le=1.0)
        calibration_quantile: float = Field(0.99, gt=0.5, lt=1.0)
        shared_text_overlap: float = Field(0.5, gt=0.0, le=1.0)
        tail_spreads: float = Field(2.5, gt=0.0)
        min_rows_for_tail: int = Field(200, ge=10)
        min_similarity: float = Field(0.8, gt=0.0, le=1.0)
        max_similarity: float = Field(0.97, gt=0.0, le=1.0)
        candidates: int = Field(10, ge=1, le=50)
        attribution_margin: float = Field(0.05, ge=0.0, lt=1.0)
        chunk_long_items: bool = True
        judge_margin: float = Field(0.1, gt=0.0, lt=1.0)
        max_judge_calls: int = Field(200, ge=0)
        max_phash_distance: int = Field(4, ge=0, le=64)
        multilingual_embedder: bool | None = None
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
        p = self.params
        timings: dict[str, float] = {}
        warnings: list[str] = []
        t0 = time.perf_counter()
        bench = load_benchmark(ctx, p.chunk_long_items)
        if not len(bench):
            raise InputError(f"the benchmark {bench.source} has no rows", "check the benchmark")
        timings["load_benchmark"] = time.perf_counter() - t0
        examined = self._examined(ctx)
        text = bench.texts is not None
        ids = ctx.store.arrow(
            f"SELECT row_id FROM {S.SAMPLES} WHERE split IN ({', '.join('?' for _ in examined)}) "
            "ORDER BY row_id",
            examined,
        )
        row_ids = ids.column(S.ROW_ID).to_numpy().astype(np.int64)
        t1 = self._tier1(ctx, bench, examined, row_ids, timings)
        t2 = self._tier2(ctx, bench, row_ids, t1.index, timings, warnings)
        n = len(row_ids)
        sim = t2.top_sim[:, 0].astype(np.float64)
        has_sim = ~np.isnan(sim)
        thr = t2.threshold
        flag1, thr1 = self._tier1_flags(t1, text)
        flag2 = has_sim & (sim >= thr) if thr is not None else np.zeros(n, bool)
        lower = thr - p.judge_margin if thr is not None else None

        t = time.perf_counter()
        item2, sets2 = self._attribute_tier2(ctx, t1, t2, row_ids, text, lower)
        timings["attribution"] = time.perf_counter() - t

        judge = np.full(n, None, dtype=object)
        judge_info = self._judge(
            ctx, bench, row_ids, sim, item2, flag1 | flag2, lower, thr, judge, warnings
        )
        flag3 = judge == True  # noqa: E712 - elementwise on an object array

        score = combined_score(t1.evidence, thr1, sim, thr, lower, flag3)

        language = self._languages(ctx, bench, examined, row_ids, warnings) if text else None
        flags = (flag1, flag2, flag3)
        named = named_items(flags, t1.item, item2, t1.sets, sets2)
        rows = result_rows(
            row_ids, bench, text, t1.evidence, t1.extra, sim, named, judge, flags, score
        )
        info = self._info(bench, examined, n, flags, t1, t2, rows, judge_info, language)
        info.update(warnings=warnings, notes=bench.notes)
        info["seconds"] = {k: round(v, 3) for k, v in timings.items()}
        info["examples"] = examples(rows, bench.row_ids is not None)
        flagged = flag1 | flag2 | flag3
        return AuditResult(rows, score=1.0 - float(flagged.sum()) / max(n, 1), info=info)

    def _tier1_flags(self, t1: _Tier1, text: bool) -> tuple[np.ndarray, float]:
        """(tier-1 flag per row, the evidence's flag threshold): n-gram overlap of at least
        `min_ngram_overlap` (text), or a pHash distance of at most `max_phash_distance`
        (images; as a similarity, 1 - distance / 64)."""
        p = self.params
        if text:
            return t1.evidence >= p.min_ngram_overlap, p.min_ngram_overlap
        return t1.extra <= p.max_phash_distance, 1.0 - p.max_phash_distance / 64.0

    def _attribute_tier2(self, ctx, t1: _Tier1, t2: _Tier2, row_ids, text: bool, lower) -> tuple:
        """(item, item sets) tier 2 names per row: the nearest item, or, for text with a
        calibrated threshold, the item attributed among near ties (`attribute_nearest`; sets:
        None otherwise). `lower`: the judge's lower bar."""
        item2 = t2.top_item[:, 0].astype(np.int64)
        if t2.threshold is None or not text:
            return item2, None
        # rows that are flagged, or that a judge will see, need the right name
        floor = lower if ctx.options.get("judge_url") else t2.threshold
        return attribute_nearest(
            t1.weights,
            lambda ids: _texts_for(ctx, ids),
            row_ids,
            t2.top_sim,
            t2.top_item,
            floor,
            self.params.attribution_margin,
        )

    def _tier1(self, ctx, bench, examined, row_ids, timings) -> _Tier1:
        """Tier 1 per examined row, read in chunks: n-gram overlap with the best item (text) or
        the pHash distance to the nearest benchmark image; the items sharing a row's evidence
        as sets, attributed."""
        p = self.params
        text = bench.texts is not None
        t0 = time.perf_counter()
        index = (
            NgramIndex(bench.texts, p.ngram, p.boilerplate_share, p.boilerplate_min_items)
            if text
            else None
        )
        bhash = image_hashes(bench.image_paths)[1] if not text else None
        timings["index_benchmark"] = time.perf_counter() - t0
        n = len(row_ids)
        ev1 = np.zeros(n)  # tier-1 evidence in [0, 1]
        item1 = np.full(n, -1, np.int64)
        extra1 = np.zeros(n, np.int64)  # shared n-grams, or pHash distance
        sets1: list[pl.DataFrame] = []  # (row position, other items with the same evidence)
        t_tier1 = 0.0
        for lo in range(0, n, p.chunk_rows):
            chunk = row_ids[lo : lo + p.chunk_rows]
            sl = slice(lo, lo + len(chunk))
            t = time.perf_counter()
            content = _read_chunk(ctx, examined, chunk, text)
            if text:
                mt = index.match(content)
                ev1[sl], item1[sl], extra1[sl] = mt.overlap, mt.best, mt.shared
                found = collect_sets(mt, lo, p.min_ngram_overlap)
                if found is not None:
                    sets1.append(found)
            else:
                _, ph, _, ok = image_hashes(content)
                dist, it = nearest_hamming(ph, bhash)
                dist[~ok] = 65
                ev1[sl] = np.clip(1.0 - dist / 64.0, 0.0, 1.0)
                item1[sl], extra1[sl] = np.where(ok, it, -1), dist
            t_tier1 += time.perf_counter() - t
        timings["tier1"] = t_tier1
        weights = sim_mod.WordWeights(bench.texts) if text else None
        sets = pl.concat(sets1) if sets1 else None
        if sets is not None:
            item1, sets = attribute_sets(
                lambda ids: _texts_for(ctx, ids), row_ids, weights, item1, sets
            )
        return _Tier1(index, weights, ev1, item1, extra1, sets)

    def _tier2(self, ctx, bench, row_ids, index, timings, warnings) -> _Tier2:
        """Tier 2: the `candidates` nearest items of every row, then the threshold calibrated
        on what was seen (and on the benchmark's own nearest-other-item similarities)."""
        p = self.params
        t = time.perf_counter()
        n, k = len(row_ids), p.candidates
        top_sim = np.full((n, k), np.nan, np.float32)  # 1M rows x 10: 80 MB together
        top_item = np.full((n, k), -1, np.int32)
        search_info: dict = {}
        thr = None
        calib: dict = {}
        if bench.vectors is not None:
            space, owner = bench.search_space()
            for lo in range(0, n, p.vector_chunk_rows):
                chunk = row_ids[lo : lo + p.vector_chunk_rows]
                s, j = sim_mod.nearest_items(
                    ctx, space, owner, chunk, k, search_info, sim_mod.EXACT_PAIRS
                )
                top_sim[lo : lo + len(chunk)], top_item[lo : lo + len(chunk)] = s, j
            bench_nn = None
            if len(bench) >= 3:
                shares = text_sharing_pairs(index, bench.texts, p.shared_text_overlap)
                bench_nn, skipped = sim_mod.benchmark_nn(space, owner, len(bench), shares)
                calib["items_sharing_text_left_out"] = int(skipped.sum())
            thr, cal, warn = sim_mod.calibrate(top_sim[:, 0], bench_nn, p)
            calib = {**cal, **calib}
            warnings += warn
        timings["tier2"] = time.perf_counter() - t
        return _Tier2(top_sim, top_item, thr, calib, search_info)

    def _info(self, bench, examined, n, flags, t1, t2, rows, judge_info, language) -> dict:
        """The run's `info` up to the warnings (see the module doc)."""
        p = self.params
        flag1, flag2, flag3 = flags
        thr = t2.threshold
        return {
            "benchmark": bench.source,
            "benchmark_rows": len(bench),
            "examined_splits": examined,
            "num_examined": n,
            "num_flagged": int((flag1 | flag2 | flag3).sum()),
            "flagged_by_tier": {
                "1": int(flag1.sum()),
                "2": int(flag2.sum()),
                "3": int(flag3.sum()),
                "1_only": int((flag1 & ~flag2).sum()),
                "2_only": int((flag2 & ~flag1).sum()),
            },
            "tier1": (
                {"kind": "ngram", "min_overlap": p.min_ngram_overlap, **t1.index.info()}
                if bench.texts is not None
                else {"kind": "phash", "max_distance": p.max_phash_distance}
            ),
            "tier2": (
                {
                    "threshold": round(thr, 4),
                    "calibrated": p.similarity_threshold is None,
                    **t2.calib,
                    "long_items": bench.long_items,
                    "search": t2.search_info,
                }
                if thr is not None
                else {"skipped": "; ".join(bench.notes) or "no vectors"}
            ),
            "tier3": judge_info,
            "language": language,
            "cache": bench.cache,
        }

    def _judge(self, ctx, bench, row_ids, sim, item2, flagged, lower, thr, judge, warnings):
        """Tier 3: the judge band is ranked, not only thresholded: the unflagged rows from the
        threshold down to `judge_margin` below it, most similar first, at most
        `max_judge_calls`. Fills `judge`."""
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
        base = {"url": url, "model": model, "band": [round(lower, 4), round(thr, 4)]}
        if not len(cand):
            warnings.append(
                f"a judge was given but no unflagged row lies within {p.judge_margin} below the "
                f"threshold {thr:.3f}: raise `judge_margin` to send it rows"
            )
            return {**base, "calls": 0, "band_rows": 0}
        texts = _texts_for(ctx, row_ids[cand]) if bench.texts is not None else None
        if texts is None:
            return {"skipped": "the judge compares texts; this benchmark holds images"}
        pairs = [(str(bench.texts[item2[i]]), str(t)) for i, t in zip(cand, texts)]
        verdicts, errors = judge_pairs(url, model, ctx.options.get("judge_key_env"), pairs)
        for i, v in zip(cand, verdicts):
            judge[i] = v
        return {
            **base,
            "band_rows": int(band.sum()),
            "calls": len(cand),
            "lowest_similarity_sent": round(float(sim[cand[-1]]), 4),
            "yes": int(sum(v is True for v in verdicts)),
            "no": int(sum(v is False for v in verdicts)),
            "failed": int(sum(v is None for v in verdicts)),
            "errors": errors[:5],
        }

    def _languages(self, ctx, bench, examined, row_ids, warnings) -> dict:
        """Languages of the benchmark and of a seeded sample of the rows; a warning when
        translations cannot be found with this embedding."""
        rng = np.random.default_rng(ctx.seed)
        take = np.sort(rng.choice(len(row_ids), min(len(row_ids), LANGUAGE_SAMPLE), replace=False))
        rows = _texts_for(ctx, row_ids[take]) if len(take) else []
        out: dict = {}
        foreign = {}
        for part, texts in (("benchmark", bench.texts), ("rows", rows)):
            lang = detect_languages(texts)
            known = lang[lang != ""]
            names, counts = np.unique(known, return_counts=True)
            shares = {str(a): round(int(c) / max(len(lang), 1), 4) for a, c in zip(names, counts)}
            out[part] = {"checked": len(lang), "shares": shares}
            other = {a: s for a, s in shares.items() if a != "en"}
            if other and (sum(c for a, c in zip(names, counts) if a != "en") >= 3):
                foreign[part] = other
        model, _, _ = embedding_model(ctx)
        multi = self.params.multilingual_embedder
        multi = is_multilingual(model) if multi is None else multi
        out["embedding_model"] = model
        out["multilingual_embedder"] = multi
        if foreign and not multi and bench.vectors is not None:
            what = "; ".join(
                f"{part}: " + ", ".join(f"{a} {s:.1%}" for a, s in sorted(v.items()))
                for part, v in foreign.items()
            )
            warnings.append(
                f"non-English text ({what}) and the embedding model {model!r} is not a known "
                "multilingual model: a translated benchmark item is not found by tier 2. Embed "
                "with a local multilingual model (`datacure embed --model PATH`, e.g. a "
                "paraphrase-multilingual-MiniLM-L12-v2 folder) and audit again, or set "
                "`multilingual_embedder: true` if this model is multilingual"
            )
        return out


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

    ids = pa.table({S.ROW_ID: pa.array(row_ids.astype(np.int64))})
    with ctx.store.registered("_dc_judge_ids", ids):
        frame = ctx.store.polars(
            f"SELECT s.row_id, s.{S.quote(ctx.text_column)} AS t FROM {S.SAMPLES} s "
            "JOIN _dc_judge_ids USING (row_id)"
        )
    got = dict(zip(frame[S.ROW_ID].to_list(), frame["t"].cast(pl.Utf8).fill_null("").to_list()))
    return [got.get(int(r), "") for r in row_ids]
