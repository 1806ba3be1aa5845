"""Helpers shared by the generators: artefact folders, embedders, devices, versions.

The repair policy lives in repair/policy.py."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from ..store.errors import InputError


def artifact_dir(store, *parts: str) -> Path:
    """A folder beside the store for generated files and trained models:
    `<db folder>/<db stem>.datacure/<parts...>` (created on demand)."""
    path = Path(store.path).resolve()
    out = path.parent / f"{path.stem}.datacure"
    out = out.joinpath(*parts)
    out.mkdir(parents=True, exist_ok=True)
    return out


def get_embedder(store, key: str | None = None):
    """The embedder that made the store's embedding `key` (default: the store's default), able to
    encode new texts or images into the same space. Raises MissingDependencyError if the embed
    layer cannot rebuild it."""
    key = key or store.default_embedding()
    if key is None:
        raise InputError("the store has no embeddings", f"run `datacure embed --db {store.path}`")
    from ..store.embed import embedder_for

    return embedder_for(store, key)


def versions(*packages: str) -> dict[str, str]:
    """Installed versions (without importing the packages)."""
    out = {"python": sys.version.split()[0]}
    for name in ("datacure", *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def torch_device(device: str | None = None) -> str:
    """`cuda` when a GPU is present (unless told otherwise), else `cpu`."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
