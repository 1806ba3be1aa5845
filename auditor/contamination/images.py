"""Perceptual image hashes for `contamination` (tier 1 for images) and `leakage`."""

from __future__ import annotations

import numpy as np


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
