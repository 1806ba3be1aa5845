"""Text normalisation, hashing and n-gram hashing shared by the text auditors.

One normaliser for every check that compares texts (exact duplicates, leakage, contamination),
so "the same text" means the same thing everywhere: Unicode NFKC, lower case, apostrophes
dropped (``it's`` -> ``its``), every other run of non-letters/non-digits turned into one space,
trimmed. This is the normalisation of lm-evaluation-harness's decontamination (lower case,
punctuation removed, split on whitespace), extended to Unicode.

Everything here is vectorised with polars (string work, token hashing) and numpy (n-gram
rolling hashes); nothing loops over rows in Python. Hashes are 64-bit and are only compared
within one process (polars' hash is not stable across versions, so never store them).
"""

from __future__ import annotations

import numpy as np
import polars as pl

_APOSTROPHES = r"['\u2019\u2018`]"
_NON_WORD = r"[^\p{L}\p{N}]+"
# Fixed seed so two calls in one process hash the same token to the same value.
_SEED = 0x5DEECE66D


def _fold_expr(expr: pl.Expr) -> pl.Expr:
    """Everything after NFKC: lower case, apostrophes dropped, other non-word runs to one space.

    Only characters that are neither letters, digits nor a plain space are replaced (one match
    per punctuation run, not per word gap, which is far cheaper than replacing every gap), then
    the rare runs of several spaces are collapsed."""
    return (
        expr.str.to_lowercase()
        .str.replace_all(_APOSTROPHES, "")
        .str.replace_all(r"[^\p{L}\p{N} ]+", " ")
        .str.replace_all(r"  +", " ")
        .str.strip_chars()
    )


def normalized_expr(expr: pl.Expr) -> pl.Expr:
    """A polars expression normalising a string column (nulls stay null)."""
    return _fold_expr(expr.cast(pl.Utf8).str.normalize("NFKC"))


def normalize_texts(texts) -> pl.Series:
    """Normalise a sequence of strings (see the module docstring); returns a polars Series.

    Same result as `normalized_expr`, faster: NFKC runs only on the texts that hold a non-ASCII
    character (ASCII is NFKC-invariant), which is most of the cost on English text."""
    s = texts if isinstance(texts, pl.Series) else pl.Series("t", texts, dtype=pl.Utf8)
    s = s.cast(pl.Utf8).rename("t")
    wide = s.str.contains(r"[^\x00-\x7F]").fill_null(False)
    if wide.any():
        idx = wide.arg_true()
        s = s.scatter(idx, s.gather(idx).str.normalize("NFKC"))
    return s.to_frame().select(_fold_expr(pl.col("t")))["t"]


def text_hashes(texts) -> np.ndarray:
    """64-bit hash of each normalised text (uint64). Null or empty texts hash like ""."""
    norm = normalize_texts(texts).fill_null("")
    return norm.hash(seed=_SEED).to_numpy().astype(np.uint64)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads a combined hash over all 64 bits (wrapping arithmetic)."""
    h = h.copy()
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def token_hashes(texts) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise normalised texts on whitespace and hash each token.

    Returns (hashes uint64 [T], doc int64 [T]): the tokens of all texts in order, and the
    position (in `texts`) of the text each token came from. Empty texts contribute nothing.
    """
    norm = normalize_texts(texts)
    frame = (
        norm.fill_null("")
        .to_frame("t")
        .with_row_index("doc")
        .select(pl.col("doc"), pl.col("t").str.split(" ").alias("tok"))
        .explode("tok")
        .filter(pl.col("tok").is_not_null() & (pl.col("tok").str.len_bytes() > 0))
    )
    h = frame["tok"].hash(seed=_SEED).to_numpy().astype(np.uint64)
    doc = frame["doc"].to_numpy().astype(np.int64)
    return h, doc


def token_counts(texts) -> np.ndarray:
    """Number of normalised tokens of each text (int64)."""
    norm = normalize_texts(texts).fill_null("")
    n = norm.str.count_matches(" ").to_numpy().astype(np.int64) + 1
    n[norm.str.len_bytes().to_numpy() == 0] = 0
    return n


_MULT = np.uint64(0x100000001B3)  # FNV prime: odd, so each combination step is invertible


def ngram_hashes(tok: np.ndarray, doc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every run of `n` consecutive tokens inside one text.

    `tok`, `doc` as returned by `token_hashes`. Returns (hashes uint64 [G], doc int64 [G]).
    The window hash is the polynomial sum(tok[i + j] * M^(n-1-j)) (wrapping uint64), then a
    64-bit mix. Windows of 1, 2, 4, 8 ... tokens are built by doubling and the n-window is
    composed from them (H_(a+b)(i) = H_a(i) * M^b + H_b(i + a)), so 13-grams cost 5 vectorised
    passes, not 13; memory is O(tokens)."""
    m = len(tok) - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    valid = doc[:m] == doc[n - 1 :]
    with np.errstate(over="ignore"):
        windows = {1: tok.astype(np.uint64, copy=False)}
        w = 1
        while 2 * w <= n:
            h = windows[w]
            windows[2 * w] = h[: len(h) - w] * _MULT ** np.uint64(w) + h[w:]
            w *= 2
        acc = None
        done = 0
        for size in sorted(windows, reverse=True):
            if done + size > n:
                continue
            part = windows[size][done : done + m]
            acc = part.copy() if acc is None else acc * _MULT ** np.uint64(size) + part
            done += size
    return _mix(acc[valid]), doc[:m][valid]


def gpt3_ngram_size(token_counts_: np.ndarray, lo: int = 8, hi: int = 13) -> int:
    """The n of GPT-3's decontamination: the 5th percentile of item length in tokens, clipped to
    [8, 13] (Brown et al. 2020, appendix C), so short benchmarks still yield n-grams."""
    counts = np.asarray(token_counts_)
    counts = counts[counts > 0]
    if not len(counts):
        return hi
    return int(np.clip(np.percentile(counts, 5), lo, hi))
