"""`embed --engine ray`: Ray Data `map_batches` over an actor pool, resumable per shard.

The driver exports the rows still missing a vector, in row_id order, as input shards of
`shard_rows` rows (`<db>.shards/work/embed-<key>/`). Ray Data maps the list of shards through
`EmbedShards` actors: each actor loads the model once (`store.embed.load_embedder`, the local
encoders unchanged), and for each shard reads its rows, encodes them `batch_size` at a time and
writes `<db>.shards/embeddings_<key>/embed/part-<first row_id>-<rows>.parquet` atomically. On a
cluster with GPUs the actors ask for one GPU each and run on CUDA; otherwise one actor per CPU.

Resumable: a shard's output file is whole or absent, and a rerun treats the rows of every
output file present as done, so an interrupted run loses at most the shards in flight. The
store is changed only at the end, in one transaction: the files become (part of) the view
`embeddings_<key>` (or, when the embedding is a table in the store from a local embed, they are
inserted into it), with the registry row and `default_embedding`.

Batch size from memory: on a GPU, the requested batch is capped by the free GPU memory at about
`GPU_BYTES_PER_ITEM` per text (activations of a MiniLM-sized model at 256 tokens); on a CPU the
encoder's own cap applies (32 texts per forward pass, store/embed.py). Input shards are sized so
an actor holds at most `ACTOR_MEMORY_FRACTION` of its node's memory share in rows and vectors.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...store import schema as S
from ...store.db import Store
from ...store.embed import EmbedReport, _model_short, embed_target
from ...store.errors import InputError
from .. import shards
from .cluster import fault_point, require_ray, task_threads

SHARD_ROWS = 20_000
GPU_BYTES_PER_ITEM = 4 * 2**20
ACTOR_MEMORY_FRACTION = 0.25


def choose_batch_size(requested: int, device: str) -> int:
    """The batch size an actor uses: on CUDA, capped by free GPU memory; else as requested."""
    if device.startswith("cuda"):
        try:
            import torch

            free, _ = torch.cuda.mem_get_info()
            return int(max(16, min(requested, free // 2 // GPU_BYTES_PER_ITEM)))
        except Exception:  # noqa: BLE001 - no CUDA runtime: keep the request
            return requested
    return requested


def shard_rows_for(dim: int, node_memory: float, actors_per_node: int, requested: int) -> int:
    """Rows per input shard: the request, capped so an actor's rows and vectors stay within its
    share of the node's memory (items counted at 4 KB each, vectors at 4 bytes a value)."""
    per_row = 4 * dim + 4096
    cap = int(node_memory * ACTOR_MEMORY_FRACTION / max(actors_per_node, 1) / per_row)
    return int(max(256, min(requested, cap)))


class EmbedShards:
    """A Ray Data actor: the model loaded once, then whole shards encoded and written."""

    def __init__(self, model, kind, device, batch_size, pca=None):
        from ...store.embed import PixelPCAEmbedder, load_embedder

        task_threads(1)
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        if pca is not None:
            self.emb = PixelPCAEmbedder(pca[0], pca[1])
            self.device = "cpu"
        else:
            self.emb = load_embedder(model, kind, device)
            self.device = device or "cpu"
        self.batch_size = choose_batch_size(batch_size, self.device)

    def __call__(self, batch: dict) -> dict:
        outs, rows = [], []
        for inp, out, index in zip(batch["inp"], batch["out"], batch["index"]):
            fault_point("embed", int(index), out)
            tbl = pq.read_table(inp)
            ids = tbl.column(S.ROW_ID).to_numpy()
            items = tbl.column("item").to_pylist()
            vec = self.emb.encode(items, batch_size=self.batch_size)
            shards.write_table(shards.vectors_table(ids, vec), out, row_group_size=16384)
            outs.append(out)
            rows.append(len(ids))
        return {"out": np.array(outs), "rows": np.array(rows)}


def ray_embed(
    store: Store,
    model: str | None = None,
    column: str | None = None,
    batch_size: int = 256,
    device: str | None = None,
    shard_rows: int = SHARD_ROWS,
    limit: int | None = None,
    cluster=None,
    progress=None,
) -> EmbedReport:
    ray = require_ray()
    store.require_samples()
    t0 = time.perf_counter()
    if batch_size < 1 or shard_rows < 1:
        raise InputError(f"--batch-size {batch_size}", "give a positive number of rows per batch")
    column, kind = embed_target(store, column)
    source = S.IMAGE_PATH if kind == "image" else column
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    dev = device or ("cuda" if gpus >= 1 else "cpu")
    notes: list[str] = []
    emb, name, key, pca = _choose_embedder(store, model, column, kind, source, notes)
    if pca is not None:
        dev = "cpu"
    table = S.embedding_table(key)
    exists = key in [e["key"] for e in store.embedding_keys()]
    is_table = exists and not shards.is_view(store, table)
    out_dir = shards.shard_root(store.path) / table / "embed"
    attached = set(shards.embedding_files(store, key) or []) if exists and not is_table else set()
    leftover = sorted(str(p) for p in out_dir.glob("part-*.parquet") if str(p) not in attached)
    todo, skipped = _rows_todo(store, table, exists, leftover, limit)
    if leftover:
        notes.append(f"resumed: {len(leftover)} shards of an interrupted run kept")
    actors, res, dev, per_node, node_mem = _actor_plan(ray, dev, gpus, pca)
    rows_per_shard = shard_rows_for(emb.dim, node_mem, per_node, shard_rows)
    work = shards.shard_root(store.path) / "work" / f"embed-{key}"
    items = _write_input_shards(store, todo, rows_per_shard, work, out_dir, source)
    new_files = list(leftover)
    if items:
        actor_kwargs = {
            "model": model,
            "kind": kind,
            "device": dev,
            "batch_size": batch_size,
            "pca": pca,
        }

        def report(done: int) -> None:
            if progress:
                progress(f"embedding {column}: {done}/{len(todo)} rows")

        new_files = _run_actors(items, actors, res, actor_kwargs, new_files, report)
    embedded = sum(pq.ParquetFile(f).metadata.num_rows for f in new_files)
    new_files = sorted(set(new_files))
    _store_vectors(store, key, emb, name, column, kind, pca, attached, new_files, is_table)
    shards.remove_tree(work)
    notes.append(
        f"engine ray: {len(items)} shards on {actors} {'GPU' if 'num_gpus' in res else 'CPU'} "
        f"actor(s) ({dev})"
    )
    return EmbedReport(
        key, name, column, emb.dim, embedded, skipped, time.perf_counter() - t0, notes
    )


def _choose_embedder(store: Store, model, column: str, kind: str, source: str, notes: list):
    """(embedder, name, key, pca): the pixel-PCA fallback for images without a model or a
    cached CLIP (fitted here, or loaded from the store; `pca` its (mean, components) for the
    actors), else the named encoder loaded on the CPU for its name and width (`pca` None)."""
    from ...store.embed import (
        PCA_FIT_ROWS,
        PIXEL_PCA,
        PixelPCAEmbedder,
        _cached_clip,
        _fetch,
        load_embedder,
        load_pixels,
    )

    if not (kind == "image" and not model and _cached_clip("cpu") is None):
        emb = load_embedder(model, kind, "cpu")  # the name and width; actors load their own
        return emb, emb.name, S.sanitize_key(_model_short(emb.name), column), None
    name = PIXEL_PCA
    key = S.sanitize_key(name, column)
    if key in [e["key"] for e in store.embedding_keys()]:
        emb = PixelPCAEmbedder.load(store, key)
    else:
        rng = np.random.default_rng(0)
        every = store.execute(f"SELECT row_id FROM {S.SAMPLES}").fetchnumpy()[S.ROW_ID]
        sample = np.sort(rng.choice(every, size=min(len(every), PCA_FIT_ROWS), replace=False))
        emb = PixelPCAEmbedder.fit(load_pixels(_fetch(store, sample, source)))
        notes.append(f"pixel-PCA fitted on {len(sample)} images, kept in table pca_{key}")
    notes.append(
        "images embedded with the pixel-PCA FALLBACK (colour and layout, not "
        "semantics); pass --model with a CLIP folder for semantic embeddings"
    )
    return emb, name, key, (emb.mean, emb.components)


def _rows_todo(store: Store, table: str, exists: bool, leftover: list, limit) -> tuple:
    """(row ids still to embed in row_id order, rows skipped): rows are done when in the
    embedding or in a whole shard an interrupted run left."""
    done_sql = []
    if exists:
        done_sql.append(f"SELECT row_id FROM {S.quote(table)}")
    if leftover:
        done_sql.append(f"SELECT row_id FROM read_parquet({shards.sql_list(leftover)})")
    todo_sql = f"SELECT row_id FROM {S.SAMPLES}"
    if done_sql:
        todo_sql += f" WHERE row_id NOT IN ({' UNION ALL '.join(done_sql)})"
    todo = store.execute(todo_sql + " ORDER BY row_id").fetchnumpy()[S.ROW_ID].astype(np.int64)
    total = int(store.scalar(f"SELECT count(*) FROM {S.SAMPLES}"))
    skipped = total - len(todo) - sum(pq.ParquetFile(f).metadata.num_rows for f in leftover)
    if limit is not None:
        todo = todo[: int(limit)]
    return todo, skipped


def _actor_plan(ray, dev: str, gpus: float, pca) -> tuple:
    """(actors, their resources, device, actors per node, the smallest node's memory): one
    actor per GPU on CUDA, else one per CPU."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_mem = min(float(n["Resources"].get("memory", 2**31)) for n in nodes) if nodes else 2**31
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    if dev.startswith("cuda") and gpus >= 1:
        actors, res = int(gpus), {"num_gpus": 1, "num_cpus": 1}
    else:
        actors, res = max(1, int(cpus)), {"num_cpus": 1}
        dev = "cpu" if pca is None else dev
    per_node = max(1, actors // max(len(nodes), 1))
    return actors, res, dev, per_node, node_mem


def _write_input_shards(store, todo, rows_per_shard: int, work: Path, out_dir: Path, source):
    """Write the rows to embed as input shards of `rows_per_shard` rows; one work item (input
    file, output file, index) per shard."""
    from ...store.embed import _fetch

    items = []
    for i, lo in enumerate(range(0, len(todo), rows_per_shard)):
        ids = todo[lo : lo + rows_per_shard]
        inp = work / f"in-{i:06d}.parquet"
        shards.write_table(
            pa.table({S.ROW_ID: pa.array(ids), "item": pa.array(_fetch(store, ids, source))}), inp
        )
        out = out_dir / f"part-{int(ids[0]):012d}-{len(ids)}.parquet"
        items.append({"inp": str(inp), "out": str(out), "index": i})
    return items


def _run_actors(items: list, actors: int, res: dict, actor_kwargs: dict, new_files: list, report):
    """Map the work items through `EmbedShards` actors: `new_files` with the output files this
    run wrote (whole files only) appended; a user's error unwrapped from Ray Data's."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        EmbedShards,
        batch_size=1,
        concurrency=min(actors, len(items)),
        fn_constructor_kwargs=actor_kwargs,
        **res,
    )
    done = 0
    try:
        for row in ds.iter_rows():
            new_files.append(str(row["out"]))
            done += int(row["rows"])
            report(done)
    except Exception as exc:  # noqa: BLE001 - Ray Data wraps a user's error; unwrap it
        _reraise(exc)
    for it in items:  # what this run wrote (whole files only)
        if Path(it["out"]).exists() and it["out"] not in new_files:
            new_files.append(it["out"])
    return new_files


def _store_vectors(store, key, emb, name, column, kind, pca, attached, new_files, is_table):
    """In one transaction: the new files inserted into the embedding table of a local embed,
    else attached with the earlier ones as the view (with the registry row and, for the
    pixel-PCA fallback, its table); `default_embedding` set. Inserted files are removed."""
    table = S.embedding_table(key)
    with store.transaction():
        if is_table:
            if new_files:
                store.execute(
                    f"INSERT INTO {S.quote(table)} SELECT row_id, vector::FLOAT[{emb.dim}] "
                    f"FROM read_parquet({shards.sql_list(new_files)})"
                )
        else:
            shards.attach_embedding(
                store,
                key,
                sorted(attached | set(new_files)),
                emb.dim,
                name,
                column,
                kind,
                True,
                info=emb.info(),
            )
            if pca is not None and not store.table_exists(f"pca_{key}"):
                emb.save(store, key)
        store.meta_set("default_embedding", key)
    if is_table:
        for f in new_files:
            Path(f).unlink(missing_ok=True)


def _reraise(exc: BaseException):
    from ...store.errors import DatacureError

    cur: BaseException | None = exc
    while cur is not None:
        cause = getattr(cur, "cause", None)
        if isinstance(cur, DatacureError):
            raise cur from None
        if isinstance(cause, DatacureError):
            raise cause from None
        cur = cur.__cause__ or cause
    raise exc


__all__ = ["EmbedShards", "ray_embed"]
