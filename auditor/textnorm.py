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


# --- language, cheaply -----------------------------------------------------------------------
# Letters of scripts other than Latin, each named as a message would name it.
SCRIPTS = {
    "Cyrillic": r"\p{Cyrillic}",
    "Greek": r"\p{Greek}",
    "Arabic": r"\p{Arabic}",
    "Hebrew": r"\p{Hebrew}",
    "Devanagari": r"\p{Devanagari}",
    "Chinese/Japanese (Han)": r"\p{Han}",
    "Japanese (kana)": r"[\p{Hiragana}\p{Katakana}]",
    "Korean (Hangul)": r"\p{Hangul}",
    "Thai": r"\p{Thai}",
}
# The commonest function words of each Latin-script language (after normalisation: lower case,
# apostrophes dropped). A text's language is the list holding most of its words.
STOPWORDS = {
    "en": "the of and to a in is that it for was on are with as his they be at this have from "
    "or by not but what all were we when your can there an which she do their if will each "
    "about how up out them then many some so these would other into has more her two like him "
    "could no than been its who now did does had he i you my me our per every much very just "
    "after before over only also any most such why where",
    "fr": "le la les de des du un une et est que qui dans pour pas sur au aux avec ce il elle "
    "ils sont en par plus ne se son sa ses mais ou été être avait fait comme nous vous leur "
    "cette aussi très sans tout combien quel quelle a-t-il chaque",
    "de": "der die das und ist nicht ein eine zu den von mit sich des auf für im dem als auch "
    "es an er so dass wie bei oder wird sind noch nach aus wenn nur war ich sie wir ihr wie "
    "viele",
    "es": "el la los las de del que y en un una es por con para no se su al lo como más pero "
    "sus le ya o este porque esta entre cuando muy sin sobre también fue había cuántos cuántas",
    "it": "il lo la gli le di che è e un una per non in con si da del della sono come ma anche "
    "al alla nel più questo quando hanno essere quanti quante",
    "pt": "o a os as de do da que e em um uma é para com não se por mais como mas foi ao dos "
    "das no na seu sua ou quando muito já está também quantos quantas",
    "nl": "de het een en van in is dat op te zijn met voor niet aan er maar om ook als bij dan "
    "nog wel naar kan uit worden dit die ze hoeveel",
}


def detect_languages(texts, min_words: int = 4, min_share: float = 0.1) -> np.ndarray:
    """A cheap guess of each text's language (object array of str): a script name when most of
    its letters are of a non-Latin script (`SCRIPTS`), else the language code of `STOPWORDS`
    whose function words make up the largest share of its words (at least `min_share`), else
    "" (too short or not recognised). Vectorised: regex counts in polars, hashed words in
    numpy; no per-text Python."""
    s = texts if isinstance(texts, pl.Series) else pl.Series("t", texts, dtype=pl.Utf8)
    s = s.cast(pl.Utf8).fill_null("")
    m = len(s)
    out = np.full(m, "", dtype=object)
    if not m:
        return out
    letters = s.str.count_matches(r"\p{L}").to_numpy().astype(np.float64)
    best_script = np.zeros(m)
    for name, pattern in SCRIPTS.items():
        share = s.str.count_matches(pattern).to_numpy() / np.maximum(letters, 1)
        better = (share > 0.5) & (share > best_script)
        out[better] = name
        best_script = np.maximum(best_script, np.where(better, share, 0))
    tok, doc = token_hashes(s)
    words = np.bincount(doc, minlength=m)
    langs = list(STOPWORDS)
    shares = np.zeros((len(langs), m))
    for k, lang in enumerate(langs):
        sw, _ = token_hashes([STOPWORDS[lang]])
        hit = np.isin(tok, sw)
        shares[k] = np.bincount(doc[hit], minlength=m) / np.maximum(words, 1)
    top = shares.argmax(axis=0)
    ok = (out == "") & (words >= min_words) & (shares.max(axis=0) >= min_share)
    out[ok] = np.array(langs, dtype=object)[top[ok]]
    return out
