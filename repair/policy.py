"""The repair policy and the vocabulary of the `edits` overlay (actions, review states, kinds of
addition), shared by planning, review, export and the generators that serve a plan.

The policy is plain data (`RepairPolicy`, a pydantic model with unknown keys forbidden), read from
a YAML or JSON file and overridden by the command-line flags that differ from their defaults, so
a plan is reproducible from what the manifest records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..auditor.base import RepairAction
from ..store import schema as S
from ..store.config import load_config
from ..store.errors import InputError, invalid_value

# Actions of the `edits` overlay (defined with the table, in store/schema.py).
DROP, RELABEL, ADD = S.EDIT_DROP, S.EDIT_RELABEL, S.EDIT_ADD
# Review states of an edit. Export applies pending and accepted edits, never rejected ones.
PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
# `edits.details.kind` of an `add` edit: a copy of an existing row, or a generated row.
OVERSAMPLE, GENERATED = S.ADD_OVERSAMPLE, S.ADD_GENERATED


class DiffusionOptions(BaseModel):
    """Built-in class- and group-conditional diffusion model (see generators/image.py)."""

    model_config = ConfigDict(extra="forbid")
    size: int | None = Field(
        None, ge=8, le=128, description="training resolution (default 16 on CPU)"
    )
    steps: int | None = Field(None, ge=1, description="training steps (default 1500 CPU, 4000 GPU)")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-3, gt=0)
    channels: list[int] = Field(default_factory=lambda: [32, 64, 64])
    inference_steps: int = Field(50, ge=2)
    guidance: float = Field(2.0, ge=0.0)
    overgenerate: float = Field(2.0, ge=1.0, description="candidates per needed sample")


class RepairPolicy(BaseModel):
    """What `datacure repair` plans. Every field can be set in the config file."""

    model_config = ConfigDict(extra="forbid")

    # --- drops and relabels from the latest audit ---
    duplicates: Literal["both", "exact", "near", "none"] = "both"
    leakage: bool = True
    contamination: bool = True
    drop_from: str = "train"  # split(s) leaked/contaminated/outlier rows are dropped from; "all"
    relabel: bool = True
    relabel_threshold: float = Field(0.8, ge=0.0, le=1.0)
    drop_unconfident_label_issues: bool = False
    drop_outliers: bool = False
    # Safety: a plan whose drops from audit findings would remove more than this share of any
    # label x group cell (group: `rebalance_by`, else the label alone) of a split is refused;
    # exact-duplicate drops, which keep one copy of the content in the cell, are not counted. A
    # cell may always lose one row. 1 accepts any plan (the override).
    max_cell_drop_share: float = Field(0.25, ge=0.0, le=1.0)
    # --- rebalancing ---
    rebalance_by: str | None = None
    rebalance_split: str = "train"
    strategy: Literal["undersample", "oversample", "generate"] = "undersample"
    ratio: float = Field(1.0, gt=0.0, le=1.0)
    # undersample keeps at least this many rows of each group (or all it has): balancing down
    # to a group of 2 rows leaves nothing to learn from; the notes say when the floor wins
    min_group_rows: int = Field(20, ge=1)
    # oversample (and generate's copies) add at most this many copies of one real row; a group
    # the cap leaves short stays short, and the notes say so
    max_copies: int = Field(30, ge=1)
    # --- generation ---
    # under `generate`, the share of each short group's gap filled with generated samples; the
    # rest are copies of the group's real rows (a group with no real rows is all generated).
    # Synthetic-only groups let a model learn "synthetic" as a shortcut (bench/repair_wga.py
    # measures the mix against copies alone).
    synthetic_share: float = Field(0.5, gt=0.0, le=1.0)
    text_mode: Literal["auto", "attribute", "flip"] = "auto"
    word_lists: list[str] = Field(default_factory=list)  # user word-pair files (YAML/JSON/TSV)
    llm_url: str | None = None
    llm_model: str | None = None
    llm_key_env: str = "OPENAI_API_KEY"
    local_model: str | None = None
    image_backend: Literal["auto", "builtin", "diffusers"] = "auto"
    image_prompt: str = "a photo of a {label} with {attribute} {value}"
    image_strength: float = Field(0.6, gt=0.0, le=1.0)
    # diffusers pipelines: the side images are edited at (default: the pipeline's own
    # resolution), and for an inpainting pipeline the mask (white: the region to repaint)
    image_work_size: int | None = Field(None, ge=64, le=2048)
    image_mask: str | None = None
    diffusion: DiffusionOptions = Field(default_factory=DiffusionOptions)
    verify_margin: float = Field(0.1, ge=0.0, le=1.0)
    verify_group: bool = True
    dedupe_threshold: float = Field(0.995, gt=0.0, le=1.0)
    max_generate: int = Field(20_000, ge=0)
    device: str | None = None
    seed: int = 0


# The CLI's defaults for the flags that map onto policy fields: a flag still at its default does
# not override the config file.
_FLAG_DEFAULTS = {
    "rebalance_by": None,
    "strategy": "undersample",
    "drop_outliers": False,
    "relabel_threshold": 0.8,
    "drop_from": None,
    "ratio": None,
    "max_cell_drop_share": None,
    "synthetic_share": None,
    "llm_url": None,
    "llm_model": None,
    "llm_key_env": "OPENAI_API_KEY",
    "local_model": None,
    "seed": 0,
}


def read_config(config: str | Path | dict | None) -> dict:
    """A repair policy from a YAML/JSON file (optionally under a top-level `repair:` key)."""
    if config is None:
        return {}
    data = config if isinstance(config, dict) else load_config(config, "repair config") or {}
    if not isinstance(data, dict):
        raise InputError("the repair config must be a mapping", "write `key: value` pairs")
    return dict(data.get("repair", data))


def make_policy(config: str | Path | dict | None = None, **flags: Any) -> RepairPolicy:
    """Config file values over the defaults, then flags that differ from their CLI defaults."""
    data = read_config(config)
    for key, value in flags.items():
        if key not in _FLAG_DEFAULTS:
            raise TypeError(f"unknown repair flag {key!r}")
        if value is not None and value != _FLAG_DEFAULTS[key]:
            data[key] = value
    try:
        return RepairPolicy(**data)
    except ValidationError as exc:
        raise invalid_value(
            exc, "bad repair policy value ", f"valid keys: {', '.join(RepairPolicy.model_fields)}"
        ) from None


REASON_REBALANCE = "rebalance"  # generators.rebalance.REASON


def declared_repairs() -> dict[str, RepairAction]:
    """Each registered auditor's declared repair (auditor/base.py `RepairAction`)."""
    from ..auditor import load_builtin

    return {n: c.repair for n, c in load_builtin().items()}
