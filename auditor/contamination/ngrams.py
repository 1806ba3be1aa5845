"""Tier 1 of `contamination`: word n-gram overlap between rows and benchmark items.

Texts are normalised (`auditor.textnorm`, the lm-evaluation-harness normalisation) and cut into
word n-grams, n = 13 as in GPT-3 and lm-evaluation-harness, or shorter for short benchmarks
(GPT-3's rule: the 5th percentile of item length, clipped to [8, 13]). An item shorter than n
contributes its whole token sequence as one gram of its own length (a row contains it when that
run of words occurs in the row); an item of fewer than `min_short_tokens` words matches only a
row that is exactly that text (the exact-match path). n-grams are hashed to uint64.

Every (n-gram, item) pair is kept, so a row is scored against each candidate item by that item's
own n-grams: the overlap of a row with an item is the share of the item's distinct n-grams that
occur in the row, and a verbatim copy has overlap 1.0 with its own item whatever other items
share parts of it. An n-gram found in more than max(`boilerplate_min_items`,
`boilerplate_share` x items) items is boilerplate (a shared instruction, a template's fixed
words) and ignored: a fixed count for small benchmarks and a fixed share for large ones, so the
same row gets the same verdict as the benchmark grows. Items that share a passage keep it (a
passage is read by a few questions, not by a share of the benchmark).

Rows are matched in chunks; memory is set by the benchmark's n-grams and the chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..textnorm import gpt3_ngram_size, ngram_hashes, token_counts, token_hashes

FILTER_BITS = 24  # prefilter of the n-gram lookup: 16 MB


@dataclass
class Matches:
    """Per row of a chunk: the best item (-1: none), its overlap and shared n-grams; and the
    candidate (row, item) pairs, best first per row (at most `max_items` per row)."""

    overlap: np.ndarray  # float [m]
    best: np.ndarray  # int [m]
    shared: np.ndarray  # int [m]
    pair_row: np.ndarray  # int [p], sorted by row
    pair_item: np.ndarray  # int [p]
    pair_overlap: np.ndarray  # float [p]
    pair_shared: np.ndarray  # int [p]


class NgramIndex:
    """The benchmark's (n-gram, item) pairs as sorted uint64 / int64 arrays."""

    def __init__(
        self,
        texts,
        n: int | None = None,
        boilerplate_share: float = 0.01,
        boilerplate_min_items: int = 20,
        min_short_tokens: int = 3,
    ):
        counts = token_counts(texts)
        self.num_items = len(counts)
        self.n = int(n or gpt3_ngram_size(counts))
        tok, doc = token_hashes(texts)
        g, owner = ngram_hashes(tok, doc, self.n)
        parts_g, parts_o = [g], [owner]
        # items shorter than n: their whole text as one gram of their length; below
        # min_short_tokens words only a row of exactly that text matches (`exact_lengths`)
        short = (counts > 0) & (counts < self.n)
        self.short_lengths = sorted(int(x) for x in np.unique(counts[short]))
        self.exact_lengths = [x for x in self.short_lengths if x < min_short_tokens]
        for length in self.short_lengths:
            keep = np.isin(doc, np.flatnonzero(counts == length))
            sg, so = ngram_hashes(tok[keep], doc[keep], length)
            parts_g.append(sg)
            parts_o.append(so)
        g, owner = np.concatenate(parts_g), np.concatenate(parts_o)
        self.num_short_items = int(short.sum())
        # distinct (n-gram, item) pairs, sorted by n-gram
        order = np.lexsort((owner, g))
        g, owner = g[order], owner[order]
        first = np.ones(len(g), bool)
        first[1:] = (g[1:] != g[:-1]) | (owner[1:] != owner[:-1])
        g, owner = g[first], owner[first]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if len(g) else np.zeros(0, int)
        items_per = np.diff(np.r_[starts, len(g)])
        self.boilerplate_limit = int(
            max(boilerplate_min_items, np.floor(boilerplate_share * self.num_items))
        )
        keep_gram = items_per <= self.boilerplate_limit
        self.num_boilerplate = int((~keep_gram).sum())
        keep = np.repeat(keep_gram, items_per)
        self.pair_gram, self.pair_item = g[keep], owner[keep]
        self.item_ngrams = np.bincount(self.pair_item, minlength=self.num_items).astype(np.int64)
        self.items_without_ngrams = int((self.item_ngrams == 0).sum())
        # the distinct n-grams, each with its run of items in pair_item
        starts = (
            np.flatnonzero(np.r_[True, self.pair_gram[1:] != self.pair_gram[:-1]])
            if len(self.pair_gram)
            else np.zeros(0, np.int64)
        )
        self.grams = self.pair_gram[starts]
        self.gram_start = starts.astype(np.int64)
        self.gram_items = np.diff(np.r_[starts, len(self.pair_gram)]).astype(np.int64)
        # a byte per 2^-24 of the hash space: most row n-grams miss it, so only the few that
        # hit are binary-searched (a gather costs far less than a search in a large array)
        self._filter = np.zeros(1 << FILTER_BITS, dtype=bool)
        self._filter[self.grams >> np.uint64(64 - FILTER_BITS)] = True

    def info(self) -> dict:
        return {
            "n": self.n,
            "benchmark_ngrams": len(self.grams),
            "boilerplate_rule": f"an n-gram in more than {self.boilerplate_limit} items",
            "boilerplate_ngrams_ignored": self.num_boilerplate,
            "short_items": self.num_short_items,
            "items_without_ngrams": self.items_without_ngrams,
        }

    def _row_grams(self, texts) -> tuple[np.ndarray, np.ndarray]:
        tok, doc = token_hashes(texts)
        g, gdoc = ngram_hashes(tok, doc, self.n)
        parts_g, parts_d = [g], [gdoc]
        if self.short_lengths:
            counts = np.bincount(doc, minlength=len(texts))
            for length in self.short_lengths:
                if length in self.exact_lengths:  # whole rows of exactly that many words
                    keep = np.isin(doc, np.flatnonzero(counts == length))
                    sg, sd = ngram_hashes(tok[keep], doc[keep], length)
                else:
                    sg, sd = ngram_hashes(tok, doc, length)
                parts_g.append(sg)
                parts_d.append(sd)
        return np.concatenate(parts_g), np.concatenate(parts_d)

    def match(self, texts, max_items: int = 10) -> Matches:
        m = len(texts)
        empty_i = np.zeros(0, np.int64)
        out = Matches(
            np.zeros(m), np.full(m, -1, np.int64), np.zeros(m, np.int64),
            empty_i, empty_i, np.zeros(0), empty_i,
        )  # fmt: skip
        if not len(self.grams) or not m:
            return out
        g, gdoc = self._row_grams(texts)
        maybe = self._filter[g >> np.uint64(64 - FILTER_BITS)]
        g, gdoc = g[maybe], gdoc[maybe]
        pos = np.searchsorted(self.grams, g)
        pos[pos == len(self.grams)] = 0
        hit = self.grams[pos] == g
        if not hit.any():
            return out
        hd, hu = gdoc[hit], pos[hit]
        # distinct (row, n-gram)
        order = np.lexsort((hu, hd))
        hd, hu = hd[order], hu[order]
        new = np.r_[True, (hd[1:] != hd[:-1]) | (hu[1:] != hu[:-1])]
        hd, hu = hd[new], hu[new]
        # every item that holds the n-gram: each candidate item is scored by its own n-grams
        cnt = self.gram_items[hu]
        total = int(cnt.sum())
        offs = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        items = self.pair_item[np.repeat(self.gram_start[hu], cnt) + offs]
        rows = np.repeat(hd, cnt)
        key = rows * np.int64(self.num_items) + items
        ukey, shared = np.unique(key, return_counts=True)
        pr, pi = ukey // self.num_items, ukey % self.num_items
        ratio = np.minimum(shared / np.maximum(self.item_ngrams[pi], 1), 1.0)
        # best first per row: overlap, then shared n-grams, then the lower item
        order = np.lexsort((pi, -shared, -ratio, pr))
        pr, pi, ratio, shared = pr[order], pi[order], ratio[order], shared[order]
        start = np.flatnonzero(np.r_[True, pr[1:] != pr[:-1]])
        rank = np.arange(len(pr)) - np.repeat(start, np.diff(np.r_[start, len(pr)]))
        keep = rank < max_items
        pr, pi, ratio, shared = pr[keep], pi[keep], ratio[keep], shared[keep]
        top = np.r_[True, pr[1:] != pr[:-1]]
        out.overlap[pr[top]] = ratio[top]
        out.best[pr[top]] = pi[top]
        out.shared[pr[top]] = shared[top]
        out.pair_row, out.pair_item, out.pair_overlap, out.pair_shared = pr, pi, ratio, shared
        return out
