"""Fill short label x group cells with generated samples, verified and with provenance.

`fill_groups` is what `repair --strategy generate` calls. For text it asks generators/text.py for
counterfactuals of real rows (same label, another group; or, when rebalancing by label, the
minimal edit that flips another label to the target); for images the built-in diffusion model
(generators/image.py) samples each short cell, or a local diffusers pipeline edits real images of
the same label and another group. Candidates are embedded with the store's embedder, verified
(generators/verify.py), and the first verified ones of each cell, up to its need, get fresh row
ids (Store.reserve_row_ids) and become rows of `generated` plus `add` edits. Rejected and surplus
candidates stay in `generated` (verified false, or surplus, without a row id) so the rejection
rate can be inspected.

Generated samples are not written into the embedding tables: those describe `samples`, and every
auditor and kNN graph assumes so. To audit a repaired dataset, export it and ingest the export
(the documented round trip): its rows, synthetic ones included, are embedded like any others.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from ..store import schema as S
from ..store.errors import DatacureError
from .common import artifact_dir, get_embedder, torch_device
from .rebalance import generated_adds

TEXT_OVERGENERATE = 1.5


@dataclass
class Filled:
    adds: list[dict] = field(default_factory=list)
    generated: pl.DataFrame | None = None
    stats: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    made: dict = field(default_factory=dict)  # group -> kept samples


def _cell(group: str) -> tuple[str, str]:
    y, v = json.loads(group)
    return str(y), str(v)


def _group_seed(seed: int, group: str) -> int:
    return int.from_bytes(group.encode()[:8].ljust(8, b"\0"), "little") % 1_000_003 + 7919 * seed


def fill_groups(
    store,
    policy,
    frame: pl.DataFrame,
    kind: str,
    need: dict[str, int],
    plan_id: int,
    progress=None,
    embedder=None,
) -> Filled:
    """Generate, verify and keep up to `need[group]` samples per group (see module docstring)."""
    out = Filled()
    modality = store.modality()
    total = sum(need.values())
    if total > policy.max_generate:
        scale = policy.max_generate / total
        need = {g: int(n * scale) for g, n in need.items()}
        out.notes.append(f"generation capped at max_generate={policy.max_generate} samples")
    if modality not in ("text", "image"):
        out.notes.append("no generator for this store (neither a text nor an image column)")
        return out
    fitted = _fit_verifier(store, policy, frame, kind, embedder, out)
    if fitted is None:
        return out
    emb, real, verifier = fitted
    if modality == "text":
        cands = _text_candidates(store, policy, frame, kind, need, out)
    else:
        cands = _image_candidates(store, policy, frame, kind, need, out, progress)
    if cands is None or cands.is_empty():
        return out
    if progress:
        progress(f"verifying {len(cands)} generated candidates")
    cands, reason, v = _verify(cands, verifier, emb, real, modality, policy)
    # the first verified candidates of each cell, up to its need
    cands = cands.with_columns(
        (pl.col("verified").cast(pl.Int64).cum_sum().over("group_key")).alias("_k"),
        pl.col("group_key").replace_strict(need, default=0, return_dtype=pl.Int64).alias("_need"),
    )
    use = (cands["verified"] & (cands["_k"] <= cands["_need"])).to_numpy()
    n_use = int(use.sum())
    start = store.reserve_row_ids(n_use) if n_use else 0
    row_ids = np.full(len(cands), None, dtype=object)
    row_ids[np.flatnonzero(use)] = np.arange(start, start + n_use)
    cands = cands.with_columns(
        pl.Series(S.ROW_ID, row_ids.tolist(), dtype=pl.Int64),
        pl.when(pl.col("verified") & ~pl.Series(use))
        .then(pl.lit("surplus"))
        .otherwise(pl.col("_reason"))
        .alias("_reason"),
    )
    if modality == "image":
        cands = _save_images(store, cands, use, plan_id)
    out.generated = _generated_frame(cands, policy, plan_id)
    out.adds = generated_adds(out.generated, policy.strategy, dict(need.items()))
    made = cands.filter(pl.Series(use)).group_by("group_key").len()
    out.made = dict(made.iter_rows())
    out.stats = _fill_stats(len(cands), n_use, reason, v.group_checked)
    return out


def _fit_verifier(store, policy, frame: pl.DataFrame, kind: str, embedder, out: Filled):
    """(embedder, the group rows' vectors, the verifier fitted on them), or None with a note
    on `out` when the samples cannot be verified (no embedding, a verifier that cannot fit)."""
    try:
        emb = embedder or get_embedder(store)
        key = store.default_embedding()
        rid, real = store.load_embeddings(key, frame[S.ROW_ID].to_numpy())
    except DatacureError as exc:
        out.notes.append(f"cannot verify generated samples ({exc.problem}); nothing generated")
        return None
    if len(rid) < len(frame):
        out.notes.append(
            f"{len(frame) - len(rid)} rows have no embedding; verifier fitted on the rest"
        )
    fr = frame.join(pl.DataFrame({S.ROW_ID: rid, "_pos": np.arange(len(rid))}), on=S.ROW_ID)
    fr = fr.sort("_pos")
    from .verify import Verifier

    try:
        verifier = Verifier(
            real,
            fr["label"].to_numpy(),
            fr["value"].to_numpy() if (kind != "label" and policy.verify_group) else None,
            margin=policy.verify_margin,
            seed=policy.seed,
        )
    except ValueError as exc:
        out.notes.append(f"cannot verify generated samples ({exc}); nothing generated")
        return None
    out.notes += verifier.notes
    return emb, real, verifier


def _verify(cands: pl.DataFrame, verifier, emb, real, modality: str, policy) -> tuple:
    """The candidates embedded (those with content) and verified: (candidates with
    `verified`, `verify_score`, `_reason`, `_margin`; each one's reason; the verdict)."""
    from .verify import verify_candidates

    has_content = cands["_ok"].to_numpy()
    vec = np.zeros((len(cands), real.shape[1]), np.float32)
    if has_content.any():
        items = cands.filter(pl.col("_ok"))
        payload = (
            items["text"].to_list()
            if modality == "text"
            else list(np.stack(items["_img"].to_list()).astype(np.uint8))
        )
        vec[has_content] = np.asarray(emb.encode(payload), dtype=np.float32)
    v = verify_candidates(
        verifier,
        vec,
        cands["label"].to_numpy(),
        cands["_value"].to_numpy() if verifier.group_model is not None else None,
        reference=real,
        dedupe_threshold=policy.dedupe_threshold,
    )
    reason = np.where(has_content, v.reason, "empty")
    keep = v.keep & has_content
    cands = cands.with_columns(
        pl.Series("verified", keep),
        pl.Series("verify_score", v.prob.astype(np.float64)),
        pl.Series("_reason", reason),
        pl.Series("_margin", v.margin.astype(np.float64)),
    )
    return cands, reason, v


def _fill_stats(candidates: int, n_use: int, reason: np.ndarray, group_checked) -> dict:
    """Candidates, kept, rejected and duplicates, and every candidate by outcome."""
    rc = dict(zip(*np.unique(reason, return_counts=True)))
    return {
        "candidates": int(candidates),
        "kept": n_use,
        "rejected": int(
            sum(c for r, c in rc.items() if r in ("label", "margin", "group", "empty"))
        ),
        "duplicates": int(rc.get("duplicate", 0)),
        # every candidate by outcome: "verified" passed (kept or surplus), else why it failed
        "reasons": {str(k) or "verified": int(c) for k, c in rc.items()},
        "group_checked": bool(group_checked),
    }


# --- text ---------------------------------------------------------------------------------------
def _text_candidates(store, policy, frame, kind, need, out: Filled) -> pl.DataFrame | None:
    from .text import TextGenerator, TextRequest

    attribute = (
        "label" if kind == "label" else ("subgroup" if kind == "slice" else policy.rebalance_by)
    )
    gen = TextGenerator.from_policy(policy, attribute=attribute)
    reqs, meta = [], []
    rng = np.random.default_rng(policy.seed)
    for group, n in sorted(need.items()):
        found = _text_parents(gen, policy, frame, kind, group, out)
        if found is None:
            continue
        par, flip = found
        y, v = _cell(group)
        budget = int(math.ceil(n * (3.0 if gen.backend == "rules" else TEXT_OVERGENERATE))) + 1
        order = rng.permutation(len(par))[: min(budget, len(par))]
        if len(order) < budget and gen.backend != "rules":  # an LLM can edit one parent twice
            order = np.resize(order, budget)
        seed0 = _group_seed(policy.seed, group)
        for j, i in enumerate(order):
            r = par.row(int(i), named=True)
            reqs.append(
                TextRequest(
                    int(r[S.ROW_ID]),
                    r["_text"] or "",
                    r["label"],
                    y,
                    r["value"],
                    v,
                    "flip" if flip else "attribute",
                    seed0 + j,
                )
            )
            meta.append(group)
    if not reqs:
        return None
    return _text_frame(gen, gen.generate(reqs), meta)


def _text_parents(gen, policy, frame, kind, group, out: Filled) -> tuple[pl.DataFrame, bool] | None:
    """The rows whose text an edit can turn into `group`'s cell, and whether the edit flips the
    label (else it changes the attribute's value); None, with a note, when there are none."""
    y, v = _cell(group)
    flip = kind == "label" or policy.text_mode == "flip"
    if flip:
        par = frame.filter(pl.col("label") != y)
        if kind != "label":
            par = par.filter(pl.col("value") == v)
    else:
        par = frame.filter((pl.col("label") == y) & (pl.col("value") != v))
    if par.is_empty() or "_text" not in par.columns:
        out.notes.append(f"group {group}: no parent rows to edit")
        return None
    src_of = "label" if flip else "value"
    servable = [
        s
        for s in par[src_of].unique().to_list()
        if gen.can_serve(s, y if flip else v, "flip" if flip else "attribute")
    ]
    if not servable:
        out.notes.append(
            f"group {group}: the {gen.backend} text backend cannot turn "
            f"{sorted(par[src_of].unique().to_list())[:5]} into {(y if flip else v)!r} "
            "(add a word list, or use --llm-url / --local-model)"
        )
        return None
    return par.filter(pl.col(src_of).is_in(servable)), flip


def _text_frame(gen, cands, meta: list) -> pl.DataFrame:
    """The generated texts as candidate rows (`group_key` from `meta`, one per candidate)."""
    return pl.DataFrame(
        {
            "parent_row_id": [c.request.parent_row_id for c in cands],
            "label": [c.request.target_label for c in cands],
            "_value": [c.request.target_value for c in cands],
            "text": [c.text for c in cands],
            "image_path": [None] * len(cands),
            "generator": ["text-" + c.request.mode for c in cands],
            "backend": [gen.backend] * len(cands),
            "model": [gen.model] * len(cands),
            "prompt": [c.prompt for c in cands],
            "seed": [c.request.seed for c in cands],
            "group_key": meta,
            "_ok": [c.text is not None and c.text != c.request.text for c in cands],
            "_mode": [c.request.mode for c in cands],
        },
        schema_overrides={"parent_row_id": pl.Int64, "image_path": pl.Utf8, "seed": pl.Int64},
    )


# --- images --------------------------------------------------------------------------------------
def _image_candidates(
    store, policy, frame, kind, need, out: Filled, progress
) -> pl.DataFrame | None:
    if "_image" not in frame.columns:
        out.notes.append("the samples have no image_path column; no image generator can serve")
        return None
    device = torch_device(policy.device)
    use_pipe = policy.image_backend == "diffusers" or (
        policy.image_backend == "auto" and policy.local_model
    )
    if use_pipe:
        return _pipeline_candidates(store, policy, frame, kind, need, out, device)
    return _diffusion_candidates(store, policy, frame, need, out, device, progress)


def _diffusion_candidates(store, policy, frame, need, out, device, progress):
    """Samples of the built-in diffusion model (trained on the rows, or reused) per cell."""
    from .image import train_or_load

    opts = policy.diffusion
    model, reused, folder = train_or_load(
        artifact_dir(store, "models"),
        frame[S.ROW_ID].to_numpy(),
        frame["_image"].to_list(),
        frame["label"].to_numpy(),
        frame["value"].to_numpy(),
        opts,
        policy.seed,
        device,
        progress,
    )
    img_size = int(model.train_info.get("image_size") or model.size)
    source = {
        "generator": "image-diffusion",
        "backend": "builtin",
        "model": f"{folder.name} ({model.num_parameters} params)",
    }
    rows = []
    for group, n in sorted(need.items()):
        y, v = _cell(group)
        m = int(math.ceil(n * opts.overgenerate))
        if m <= 0:
            continue
        seed = _group_seed(policy.seed, group)
        if progress:
            progress(f"sampling {m} images for group {group}")
        imgs = model.sample(
            model.cell([y] * m, [v] * m),
            seed=seed,
            inference_steps=opts.inference_steps,
            guidance=opts.guidance,
            out_size=img_size,
            device=device,
        )
        prompt = f"class-conditional sample: label={y}, {policy.rebalance_by}={v}"
        rows += _image_rows(group, imgs, source, [None] * m, [prompt] * m, [seed] * m)
    if not rows:
        return None
    out.notes.append(
        f"built-in diffusion model {'reused' if reused else 'trained'}: {folder} "
        f"({model.train_info.get('steps')} steps, {model.train_info.get('seconds')} s)"
    )
    return _frame_with_images(rows)


def _pipeline_candidates(store, policy, frame, kind, need, out, device) -> pl.DataFrame | None:
    from .image import load_images
    from .img2img import DiffusersEditor, load_mask

    if not policy.local_model:
        out.notes.append("image_backend diffusers needs --local-model PATH")
        return None
    editor = DiffusersEditor(policy.local_model, device=device)
    source = {"generator": "image-edit", "backend": editor.backend, "model": editor.model}
    mask = load_mask(policy.image_mask) if policy.image_mask else None
    rng = np.random.default_rng(policy.seed)
    rows = []
    for group, n in sorted(need.items()):
        y, v = _cell(group)
        par = frame.filter((pl.col("label") == y) & (pl.col("value") != v))
        if kind == "label" or par.is_empty():
            out.notes.append(f"group {group}: no parent images of label {y!r} in another group")
            continue
        m = int(math.ceil(n * policy.diffusion.overgenerate))
        order = np.resize(rng.permutation(len(par)), m)
        sub = par[order.tolist()]
        attr = policy.rebalance_by if kind == "column" else "subgroup"
        prompts = [policy.image_prompt.format(label=y, attribute=attr, value=v)] * m
        seed = _group_seed(policy.seed, group)
        imgs = editor.edit(
            load_images(sub["_image"].to_list()),
            prompts,
            seed=seed,
            strength=policy.image_strength,
            work_size=policy.image_work_size,
            mask=mask,
        )
        parents = [int(sub[S.ROW_ID][j]) for j in range(m)]
        rows += _image_rows(group, imgs, source, parents, prompts, [seed + j for j in range(m)])
    return _frame_with_images(rows) if rows else None


def _image_rows(group: str, imgs, source: dict, parents: list, prompts: list, seeds: list):
    """One candidate row per generated image `imgs[j]` of `group`'s cell, from parent row
    `parents[j]` (None: sampled), with its prompt and seed; `source`: generator, backend, model."""
    y, v = _cell(group)
    return [
        {
            "parent_row_id": parents[j],
            "label": y,
            "_value": v,
            "text": None,
            "image_path": None,
            "generator": source["generator"],
            "backend": source["backend"],
            "model": source["model"],
            "prompt": prompts[j],
            "seed": seeds[j],
            "group_key": group,
            "_ok": True,
            "_img": imgs[j],
            "_index": j,
        }
        for j in range(len(seeds))
    ]


def _frame_with_images(rows: list[dict]) -> pl.DataFrame:
    imgs = [r.pop("_img") for r in rows]
    fr = pl.DataFrame(
        rows,
        schema_overrides={
            "parent_row_id": pl.Int64,
            "text": pl.Utf8,
            "image_path": pl.Utf8,
            "seed": pl.Int64,
        },
    )
    return fr.with_columns(pl.Series("_img", list(imgs), dtype=pl.Object))


def _save_images(store, cands: pl.DataFrame, use: np.ndarray, plan_id: int) -> pl.DataFrame:
    from .image import save_png

    folder = artifact_dir(store, "generated", f"plan-{plan_id}")
    idx = np.flatnonzero(use)
    rid = cands[S.ROW_ID].to_list()
    paths = [folder / f"{rid[i]}.png" for i in idx]
    imgs = cands["_img"].to_list()
    save_png([imgs[i] for i in idx], paths)
    col = [None] * len(cands)
    for i, p in zip(idx, paths):
        col[i] = str(p)
    return cands.with_columns(pl.Series("image_path", col, dtype=pl.Utf8))


def _generated_frame(cands: pl.DataFrame, policy, plan_id: int) -> pl.DataFrame:
    """Rows for the `generated` table (gen_id and created_at are added on insert)."""
    column = policy.rebalance_by
    extra = {c for c in ("_mode", "_index") if c in cands.columns}

    def det(row) -> str:
        d = {
            "plan_id": plan_id,
            "status": row["_reason"] or "kept",
            "margin": row["_margin"],
            "group": row["group_key"],
            "strategy": policy.strategy,
        }
        if column not in ("slice", S.LABEL, None):
            d["columns"] = {column: row["_value"]}
        if "_mode" in extra:
            d["mode"] = row["_mode"]
        if "_index" in extra:
            d["sample_index"] = row["_index"]
        return json.dumps(d, default=str)

    cols = ["_reason", "_margin", "group_key", "_value", *extra]
    details = [det(r) for r in cands.select(cols).iter_rows(named=True)]
    return cands.select(
        S.ROW_ID,
        "parent_row_id",
        pl.lit(policy.rebalance_split).alias("split"),
        pl.col("label").cast(pl.Utf8),
        pl.col("text").cast(pl.Utf8),
        pl.col("image_path").cast(pl.Utf8),
        "generator",
        "backend",
        "model",
        "prompt",
        pl.col("seed").cast(pl.Int64),
        "verified",
        "verify_score",
        "group_key",
    ).with_columns(pl.Series("details", details, dtype=pl.Utf8))
