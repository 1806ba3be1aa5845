"""Benchmark: `contamination` on two benchmark families, `leakage` on NoisyAG-News, and scale.

Families (built in bench/contamination_families.py from ../shared/data, described there):

- `gsm8k`: GSM8K test (1,319 questions) as the benchmark; train = GSM8K train (7,473
  same-topic rows), 2,000 MNLI premises (unrelated rows) and, seeded, 100 test questions copied
  verbatim, 100 rephrased by lm-sys/llm-decontaminator and 20 hand-translated into French.
- `exam`: a multiple-choice exam in three subjects (510 items: reading questions sharing long
  IMDb passages, MNLI premises with their 3 hypotheses, 6 arithmetic templates); train = GSM8K
  train (unrelated), 595 same-topic rows, and, seeded, 100 verbatim items, 100 rule-rephrased
  items (content kept), 40 passages copied with a question of their own, 60 template items
  translated into French.

For each family: recall of each kind of planted row, false flags on unrelated and same-topic
rows, the right-item rate (flagged planted rows whose first named benchmark item is the one
they came from; for a copied passage, one of the items sharing it), and beside each the anchor:
GPT-3 / lm-evaluation-harness decontamination (any shared 13-gram with an item, the same
normaliser; the item with the most shared 13-grams named), computed in the same process.
all-MiniLM-L6-v2 embeddings (cached per text in bench/out/), no judge. The exam family is also
audited twice with the benchmark given as a file (`--benchmark FILE`) to time the cache.

    .venv/bin/python bench/contamination.py              # both families, seeds 0-2, AG News
    .venv/bin/python bench/contamination.py --quick      # seed 0, no AG News (make bench)
    .venv/bin/python bench/contamination.py --scale 1000000   # scale run, see `scale`
    .venv/bin/python bench/contamination.py --drift 100000    # split_drift, see `drift`

Figures go to bench/results/contamination.json (`--quick`: contamination_quick.json; `--name`
to choose). Goals: never below the anchor; rephrased recall >= 0.9 with <= 1% false flags where
the rephrasing keeps the item's content; right item >= 0.95; GSM8K no worse than before.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / "bench" / "out"

PLANTED = ("verbatim", "rephrased", "passage", "translated")
CONTROLS = ("unrelated", "same_topic")


def embed(texts: list[str], name: str) -> np.ndarray:
    """MiniLM vectors of `texts`, cached per text in bench/out/<name>_minilm.parquet (so a new
    seed or a new selection only embeds texts not seen before)."""
    path = CACHE / f"{name}_minilm.parquet"
    known: dict[str, np.ndarray] = {}
    if path.exists():
        old = pl.read_parquet(path)
        known = dict(zip(old["text"].to_list(), np.asarray(old["vector"].to_list(), np.float32)))
    todo = sorted(set(texts) - set(known))
    if todo:
        from datacure.store.embed import load_embedder

        t0 = time.perf_counter()
        enc = load_embedder(kind="text", device="cpu").encode
        for lo in range(0, len(todo), 1000):
            batch = todo[lo : lo + 1000]
            for t, v in zip(batch, np.asarray(enc(batch), np.float32)):
                known[t] = v
            print(
                f"  embedding {name}: {lo + len(batch)}/{len(todo)} new texts "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            CACHE.mkdir(parents=True, exist_ok=True)
            pl.DataFrame(
                {"text": list(known), "vector": [v.tolist() for v in known.values()]}
            ).write_parquet(path)
    return np.stack([known[t] for t in texts]).astype(np.float32)


def build_store(db: Path, frame: pl.DataFrame, vectors: np.ndarray):
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    st = Store(db)
    ingest_frame(st, frame, split_column="part", text="question", label=None)
    rid = st.fetchall("SELECT row_id FROM samples ORDER BY row_id")
    rid = np.array([r[0] for r in rid], np.int64)
    with st.transaction():
        st.register_embedding(
            "minilm", vectors.shape[1], "all-MiniLM-L6-v2", "question", "text", True
        )
        st.append_embeddings("minilm", rid, vectors)
    return st


def anchor_13gram(bench: list[str], rows: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """GPT-3 / lm-evaluation-harness decontamination: (row shares any 13-gram with an item,
    the item with the most shared distinct 13-grams or -1). Written here, not taken from the
    auditor, so the anchor does not move with it."""
    from datacure.auditor.textnorm import ngram_hashes, token_hashes

    bg, bd = ngram_hashes(*token_hashes(bench), 13)
    pairs = pl.DataFrame({"g": bg, "item": bd}).unique()
    rg, rd = ngram_hashes(*token_hashes(rows), 13)
    hits = (
        pl.DataFrame({"g": rg, "row": rd})
        .unique()
        .join(pairs, on="g")
        .group_by("row", "item")
        .len()
        .sort("row", "len", "item", descending=[False, True, False])
        .unique("row", keep="first")
    )
    hit = np.zeros(len(rows), bool)
    best = np.full(len(rows), -1, np.int64)
    hit[hits["row"].to_numpy()] = True
    best[hits["row"].to_numpy()] = hits["item"].to_numpy()
    return hit, best


def _details(st) -> tuple[np.ndarray, list[dict], dict]:
    res = st.polars(
        "SELECT row_id, is_issue, details::VARCHAR AS d FROM issues "
        "WHERE auditor = 'contamination' ORDER BY row_id"
    )
    info = json.loads(st.scalar("SELECT info FROM issue_summary ORDER BY run_id DESC LIMIT 1"))
    return res["is_issue"].to_numpy(), [json.loads(x) for x in res["d"].to_list()], info


def evaluate(fam, flagged, named, hit13, best13) -> dict:
    """Per kind of row: n, recall or false-flag rate, right item; datacure and the anchor."""
    out = {}
    for k in (*PLANTED, *CONTROLS):
        m = fam.kind == k
        if not m.any():
            continue
        row = {"n": int(m.sum()), "flagged": float(flagged[m].mean())}
        row["anchor_flagged"] = float(hit13[m].mean())
        if k in PLANTED:
            idx = np.flatnonzero(m)
            ok = np.array([_right(fam, i, named[i]) for i in idx])
            ok13 = np.array([_right(fam, i, [best13[i]]) for i in idx])
            f, f13 = flagged[idx], hit13[idx]
            row["right_item"] = float(ok[f].mean()) if f.any() else None
            row["right_item_of_all"] = float((ok & f).mean())
            row["anchor_right_item"] = float(ok13[f13].mean()) if f13.any() else None
        out[k] = row
    return out


def _right(fam, i: int, named: list[int]) -> bool:
    if not named or named[0] < 0:
        return False
    if fam.right[i] is not None:
        return int(named[0]) in fam.right[i]
    return int(named[0]) == int(fam.item[i])


def run_family(fam, seed: int, file_cache: bool = False) -> dict:
    from datacure.auditor.runner import run_audit

    print(
        f"\n{fam.name} (seed {seed}): benchmark {len(fam.bench)} items; train {len(fam.train)} "
        f"rows: {dict(zip(*np.unique(fam.kind, return_counts=True)))}",
        flush=True,
    )
    vec = embed(fam.train + fam.bench, "contamination")
    frame = pl.DataFrame(
        {
            "question": fam.train + fam.bench,
            "part": ["train"] * len(fam.train) + ["bench"] * len(fam.bench),
        }
    )
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        st = build_store(Path(tmp) / "c.duckdb", frame, vec)
        t0 = time.perf_counter()
        rep = run_audit(st, auditors=["contamination"], reference="bench")
        out["audit_seconds"] = time.perf_counter() - t0
        assert rep.outcomes[0].status == "ok", rep.outcomes[0].reason
        flagged, det, info = _details(st)
        if file_cache:
            out["file_audit_seconds"] = _file_audits(st, fam, Path(tmp))
        st.close()
    named = [x["benchmark_index"] or [-1] for x in det]
    t0 = time.perf_counter()
    hit13, best13 = anchor_13gram(fam.bench, fam.train)
    out["anchor_seconds"] = time.perf_counter() - t0
    out["rows"] = evaluate(fam, flagged, named, hit13, best13)
    t2 = info.get("tier2", {})
    out["tier2_threshold"] = t2.get("threshold")
    out["calibration"] = {k: t2.get(k) for k in ("method", "rows", "benchmark") if k in t2}
    out["long_items"] = t2.get("long_items")
    out["audit_parts_seconds"] = info.get("seconds")
    out["warnings"] = info.get("warnings", [])
    out["by_tier"] = info.get("flagged_by_tier")
    tiers = [set(x["tiers"] or []) for x in det]
    for k in PLANTED:
        m = np.flatnonzero(fam.kind == k)
        if len(m):
            out["rows"][k]["by_tier"] = {
                str(t): float(np.mean([t in tiers[i] for i in m])) for t in (1, 2)
            }
    _print(fam, out)
    # the controls that were flagged, for reading by a person
    bad = np.flatnonzero(np.isin(fam.kind, CONTROLS) & flagged)
    out["flagged_controls"] = [
        {
            "kind": str(fam.kind[i]),
            "row": fam.train[i][:160],
            "item": fam.bench[named[i][0]][:160] if named[i][0] >= 0 else None,
            "tier": det[i]["tier"],
            "similarity": det[i]["similarity"],
            "ngram_overlap": det[i].get("ngram_overlap"),
        }
        for i in bad[:12]
    ]
    return out


def _file_audits(st, fam, tmp: Path) -> list[float]:
    """Audit twice with the benchmark as a JSONL file: the first embeds it, later ones should
    reuse what the first stored."""
    from datacure.auditor.runner import run_audit

    path = tmp / "bench.jsonl"
    pl.DataFrame({"question": fam.bench}).write_ndjson(path)
    secs = []
    for _ in range(2):
        t0 = time.perf_counter()
        rep = run_audit(
            st, auditors=["contamination"], splits=["train"], context_options={"benchmark": path}
        )
        secs.append(time.perf_counter() - t0)
        assert rep.outcomes[0].status == "ok", rep.outcomes[0].reason
    print(f"  --benchmark FILE audits: {', '.join(f'{s:.1f} s' for s in secs)}", flush=True)
    return secs


def _print(fam, out: dict) -> None:
    print(
        f"  audit {out['audit_seconds']:.1f} s; tier-2 threshold {out['tier2_threshold']}; "
        f"anchor {out['anchor_seconds']:.2f} s"
    )
    for w in out["warnings"]:
        print(f"  warning: {w}")
    head = f"  {'rows':<12}{'n':>6}{'flagged':>9}{'right':>8}  | {'13-gram':>8}{'right':>8}"
    print(head)
    for k, r in out["rows"].items():
        right = "" if r.get("right_item") is None else f"{r['right_item']:.3f}"
        right13 = "" if r.get("anchor_right_item") is None else f"{r['anchor_right_item']:.3f}"
        print(
            f"  {k:<12}{r['n']:>6}{r['flagged']:>9.4f}{right:>8}  | "
            f"{r['anchor_flagged']:>8.4f}{right13:>8}"
        )


def families(seeds: list[int], names: list[str], file_cache: bool) -> dict:
    import contamination_families as F

    build = {"gsm8k": F.gsm8k_family, "exam": F.exam_family}
    out: dict = {}
    for name in names:
        out[name] = {}
        for s in seeds:
            fam = build[name](s)
            out[name][str(s)] = run_family(fam, s, file_cache and name == "exam" and s == seeds[0])
            out[name]["notes"] = fam.notes
    return out


def tables(res: dict) -> list[dict]:
    from common import median_range, table

    out = []
    for name, by_seed in res.items():
        seeds = [k for k in by_seed if k.isdigit()]
        kinds = list(by_seed[seeds[0]]["rows"])
        rows = []
        for k in kinds:

            def get(f, k=k, by_seed=by_seed, seeds=seeds):
                return [by_seed[s]["rows"][k].get(f) for s in seeds]

            rows.append(
                [
                    k,
                    by_seed[seeds[0]]["rows"][k]["n"],
                    median_range(get("flagged"), 4 if k in CONTROLS else 3),
                    median_range(get("right_item")) if k in PLANTED else "",
                    median_range(get("anchor_flagged"), 4 if k in CONTROLS else 3),
                    median_range(get("anchor_right_item")) if k in PLANTED else "",
                ]
            )
        out.append(
            table(
                f"contamination, {name} family (seeds {', '.join(seeds)}): recall of planted "
                "rows, false flags on controls",
                ["rows", "n", "datacure flagged", "right item", "13-gram flagged", "right item"],
                rows,
            )
        )
    return out


def agnews() -> dict:
    from datacure.auditor.runner import run_audit

    d = DATA / "noisy_ag_news"
    # `group` is numeric in train and a letter in test: read it as text in both
    tr = pl.read_csv(d / "train_10k.csv", schema_overrides={"group": pl.Utf8})
    te = pl.read_csv(d / "test.csv", schema_overrides={"group": pl.Utf8})
    print(f"\nNoisyAG-News: leakage of test ({len(te)}) against train ({len(tr)})")
    from common import minilm_vectors

    # the cache bench/label_quality.py and bench/false_alarms.py fill (the same tags)
    vec = np.vstack(
        [
            minilm_vectors(tr["text"].to_list(), "noisy_ag"),
            minilm_vectors(te["text"].to_list(), "ag_news_test"),
        ]
    )
    frame = pl.concat(
        [
            tr.with_columns(pl.lit("train").alias("part")),
            te.with_columns(pl.lit("test").alias("part")),
        ]
    )
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    with tempfile.TemporaryDirectory() as tmp:
        st = Store(Path(tmp) / "ag.duckdb")
        ingest_frame(st, frame, split_column="part", text="text", label="label")
        rid = np.array([r[0] for r in st.fetchall("SELECT row_id FROM samples ORDER BY row_id")])
        with st.transaction():
            st.register_embedding("minilm", vec.shape[1], "all-MiniLM-L6-v2", "text", "text", True)
            st.append_embeddings("minilm", rid, vec)
        t0 = time.perf_counter()
        run_audit(st, auditors=["leakage"])
        secs = time.perf_counter() - t0
        info = json.loads(st.scalar("SELECT info FROM issue_summary"))
        res = st.polars(
            "SELECT i.row_id, i.details::VARCHAR AS d, s.text FROM issues i JOIN samples s "
            "USING (row_id) WHERE i.auditor = 'leakage' AND i.is_issue ORDER BY i.row_id"
        )
        samples = st.polars("SELECT row_id, split, text FROM samples")
        scores = st.polars(
            "SELECT row_id, is_issue, (details->>'nearest_similarity')::DOUBLE AS sim "
            "FROM issues WHERE auditor = 'leakage'"
        )
        st.close()
    cal = info["calibration"][0]
    print(
        f"  audit {secs:.1f} s: {info['num_examined']} test rows examined, "
        f"{info['num_exact']} exact, {info['num_near_only']} near only "
        f"(cosine >= {cal['min_similarity']:.3f}, calibrated: median within-split "
        f"nearest-neighbour cosine {cal['median_nn_similarity']:.3f})"
    )
    # reference count: test headlines (text before " . ") that occur as a train headline
    head = samples.with_columns(
        pl.col("text").str.split(" . ").list.first().str.to_lowercase().str.strip_chars().alias("h")
    )
    trh = set(head.filter(pl.col("split") == "train")["h"].to_list())
    te_head = head.filter(pl.col("split") == "test")
    shared = te_head.filter(pl.col("h").is_in(list(trh)))
    found = set(res["row_id"].to_list())
    print(
        f"  test rows whose headline occurs in train: {len(shared)}; of these flagged by "
        f"leakage: {len(set(shared['row_id'].to_list()) & found)}"
    )
    best = scores.filter(pl.col("row_id").is_in(shared["row_id"].to_list()) & ~pl.col("is_issue"))
    q = best["sim"].quantile
    print(
        f"  the {len(best)} shared-headline rows not flagged: nearest train row's cosine median "
        f"{q(0.5):.3f}, 90th percentile {q(0.9):.3f}, max {best['sim'].max():.3f}"
    )
    for row in best.sort("sim", descending=True).head(3).iter_rows(named=True):
        t = samples.filter(pl.col("row_id") == row["row_id"])["text"][0]
        print(f"    not flagged, sim {row['sim']:.3f}: {t[:140]!r}")
    examples = []
    for row in res.head(8).iter_rows(named=True):
        x = json.loads(row["d"])
        part = samples.filter(pl.col("row_id") == x["partners"][0])["text"][0]
        print(f"    {x['kind']} sim {x['similarity'][0]:.3f}")
        print(f"      test:  {row['text'][:110]!r}")
        print(f"      train: {part[:110]!r}")
        examples.append(
            {"kind": x["kind"], "similarity": x["similarity"][0], "test": row["text"][:110]}
        )
    return {
        "audit_seconds": secs,
        "test_rows_examined": info["num_examined"],
        "exact": info["num_exact"],
        "near_only": info["num_near_only"],
        "min_similarity": cal["min_similarity"],
        "median_nn_similarity": cal["median_nn_similarity"],
        "shared_headline_rows": len(shared),
        "shared_headline_flagged": len(set(shared["row_id"].to_list()) & found),
        "unflagged_shared_nearest_cosine": {
            "median": q(0.5),
            "q90": q(0.9),
            "max": best["sim"].max(),
        },
        "examples": examples,
    }


# --- scale ---------------------------------------------------------------------------------------
SCALE_BENCH = 10_000
SCALE_DIM = 384


def _synth_texts(rng, n: int, length: int = 40, vocab: int = 30_000) -> pl.Series:
    """n texts of `length` words drawn from a `vocab`-word vocabulary (vectorised)."""
    idx = rng.integers(0, vocab, (n, length))
    frame = pl.from_numpy(idx)
    return frame.select(
        pl.concat_str(
            [pl.lit("w") + pl.col(c).cast(pl.Utf8) for c in frame.columns], separator=" "
        ).alias("t")
    )["t"]


def _synth_vectors(rng, n: int, proj: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Low-rank vectors like real embeddings: a 24-d latent around 50 centres, projected."""
    z = centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, proj.shape[0]))
    x = z @ proj + 0.3 * rng.normal(size=(n, proj.shape[1]))
    return x.astype(np.float32)


def build_scale_store(db: Path, n: int, plant: int = 1000, seed: int = 0):
    """n train rows and a 10k-row benchmark split with low-rank 384-d vectors; `plant` train
    rows embed a benchmark item's text verbatim, `plant` others have a vector at cosine ~0.97
    to an item (text unrelated)."""
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(24, SCALE_DIM)) / np.sqrt(24)
    centres = rng.normal(scale=2.0, size=(50, 24))
    bench_t = _synth_texts(rng, SCALE_BENCH, 30)
    bench_v = _synth_vectors(rng, SCALE_BENCH, proj, centres)
    st = Store(db)
    t0 = time.perf_counter()
    text = _synth_texts(rng, n)
    items = rng.choice(SCALE_BENCH, 2 * plant, replace=False)
    at = rng.choice(n, 2 * plant, replace=False)
    tier1_at, tier2_at = at[:plant], at[plant:]
    planted = ("intro " + bench_t.gather(items[:plant]) + " outro").to_list()
    text = text.scatter(tier1_at, planted)
    ingest_frame(st, pl.DataFrame({"text": text}), split="train", text="text", label=None)
    ingest_frame(st, pl.DataFrame({"text": bench_t}), split="bench", text="text", label=None)
    with st.transaction():
        st.register_embedding("synth", SCALE_DIM, "synthetic-low-rank", "text", "text", False)
        for lo in range(0, n, 100_000):
            m = min(100_000, n - lo)
            v = _synth_vectors(rng, m, proj, centres)
            sel = (tier2_at >= lo) & (tier2_at < lo + m)
            b = bench_v[items[plant:][sel]]
            noise = rng.normal(size=b.shape).astype(np.float32)
            noise *= (
                0.25
                * np.linalg.norm(b, axis=1, keepdims=True)
                / np.linalg.norm(noise, axis=1, keepdims=True)
            )
            v[tier2_at[sel] - lo] = b + noise
            st.append_embeddings("synth", np.arange(lo, lo + m), v)
        st.append_embeddings("synth", np.arange(n, n + SCALE_BENCH), bench_v)
    st.close()
    print(
        f"  built the store ({n} + {SCALE_BENCH} rows, {SCALE_DIM}-d) in "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return tier1_at, tier2_at


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB. (ru_maxrss would include the parent's
    peak: Linux keeps it across fork and exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scale_audit(db: str) -> None:
    """Child process: run the audit and print its figures as JSON."""
    from datacure.auditor.runner import run_audit
    from datacure.store import Store

    st = Store(db)
    t0 = time.perf_counter()
    rep = run_audit(st, auditors=["contamination"], reference="bench")
    secs = time.perf_counter() - t0
    o = rep.outcomes[0]
    info = o.info
    flagged = [
        r[0]
        for r in st.fetchall(
            "SELECT row_id FROM issues WHERE auditor='contamination' AND is_issue ORDER BY 1"
        )
    ]
    print(
        json.dumps(
            {
                "seconds": secs,
                "auditor_seconds": o.seconds,
                "status": o.status,
                "reason": o.reason,
                "parts": info.get("seconds"),
                "search": info.get("tier2", {}).get("search"),
                "threshold": info.get("tier2", {}).get("threshold"),
                "by_tier": info.get("flagged_by_tier"),
                "flagged": flagged,
                "peak_rss_mb": _peak_rss_mb(),
            }
        )
    )


def _ngram_memory(n: int) -> None:
    """Child process: tier 1 alone over n streamed rows; prints peak RSS (MB) and seconds."""
    from datacure.auditor.contamination import NgramIndex

    rng = np.random.default_rng(1)
    idx = NgramIndex(_synth_texts(rng, SCALE_BENCH, 30))
    base = _peak_rss_mb()
    t0 = time.perf_counter()
    hits = 0
    for lo in range(0, n, 50_000):
        ov = idx.match(_synth_texts(rng, min(50_000, n - lo))).overlap
        hits += int((ov > 0).sum())
    peak = _peak_rss_mb()
    print(
        json.dumps(
            {
                "rows": n,
                "index_rss_mb": base,
                "peak_rss_mb": peak,
                "seconds": time.perf_counter() - t0,
                "hits": hits,
            }
        )
    )


def _child(*args: str) -> dict:
    import subprocess

    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def scale(n: int) -> dict:
    import os

    print(
        f"Scale: {n} train rows against a {SCALE_BENCH}-row benchmark, embeddings given "
        f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=CACHE if CACHE.exists() else None) as tmp:
        db = Path(tmp) / "scale.duckdb"
        t1, t2 = build_scale_store(db, n)
        r = _child("--scale-audit", str(db))
    flagged = set(r["flagged"])
    print(
        f"  audit (child process): {r['seconds']:.1f} s total, auditor {r['auditor_seconds']:.1f}"
        f" s, peak RSS {r['peak_rss_mb']:.0f} MB; parts {r['parts']}"
    )
    print(f"  tier 2 search: {r['search']}; threshold {r['threshold']:.3f}")
    print(
        f"  planted verbatim recall {np.isin(t1, list(flagged)).mean():.3f}, planted near-vector "
        f"recall {np.isin(t2, list(flagged)).mean():.3f}, other rows flagged "
        f"{len(flagged - set(t1.tolist()) - set(t2.tolist()))} of {n - len(t1) - len(t2)}"
    )
    print("  n-gram tier alone, streamed in 50k-row chunks (peak RSS of a child process):")
    ngram = []
    for m in (n // 10, n):
        x = _child("--ngram-memory", str(m))
        print(
            f"    {m:>8} rows: {x['seconds']:.1f} s, peak RSS {x['peak_rss_mb']:.0f} MB "
            f"(benchmark index built: {x['index_rss_mb']:.0f} MB)"
        )
        ngram.append(x)
    r.pop("flagged")
    return {
        "rows": n,
        "benchmark_items": SCALE_BENCH,
        "audit": r,
        "verbatim_recall": float(np.isin(t1, list(flagged)).mean()),
        "near_vector_recall": float(np.isin(t2, list(flagged)).mean()),
        "other_rows_flagged": len(flagged - set(t1.tolist()) - set(t2.tolist())),
        "other_rows": n - len(t1) - len(t2),
        "ngram_tier_alone": ngram,
    }


def drift(n: int) -> dict:
    """split_drift and leakage on n train + n test rows (low-rank 384-d vectors, two metadata
    columns, labels), test holding a new cluster of 5% of its rows (vectors moved by a random
    offset): is the drift found, and are exactly those rows flagged?"""
    from datacure.auditor.runner import run_audit
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    rng = np.random.default_rng(0)
    proj = rng.normal(size=(24, SCALE_DIM)) / np.sqrt(24)
    centres = rng.normal(scale=2.0, size=(50, 24))
    x = _synth_vectors(rng, 2 * n, proj, centres)
    moved = np.arange(n, n + n // 20)
    x[moved] += 3 * rng.normal(size=SCALE_DIM).astype(np.float32)
    frame = pl.DataFrame(
        {
            "a": rng.normal(size=2 * n),
            "c": rng.choice(list("abc"), 2 * n),
            "label": rng.integers(0, 3, 2 * n),
            "part": ["train"] * n + ["test"] * n,
        }
    )
    print(
        f"\nDrift: {n} train + {n} test rows, {len(moved)} test rows in a new cluster", flush=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        st = Store(Path(tmp) / "drift.duckdb")
        ingest_frame(st, frame, split_column="part", label="label")
        with st.transaction():
            st.register_embedding("synth", SCALE_DIM, "synthetic-low-rank", None, "text", False)
            st.append_embeddings("synth", np.arange(2 * n), x)
        rep = run_audit(st, auditors=["split_drift"])
        info = json.loads(st.scalar("SELECT info FROM issue_summary"))
        flagged = np.array(
            [r[0] for r in st.fetchall("SELECT row_id FROM issues WHERE is_issue")], np.int64
        )
        st.close()
    emb = info["embedding"]
    hit = np.isin(flagged, moved).sum()
    print(
        f"  split_drift {rep.outcomes[0].seconds:.1f} s: embedding AUC {emb['auc']:.3f}, p "
        f"{emb['p_value']:.4f}, drifted {emb['drifted']}; drifted columns "
        f"{[c['column'] for c in info['drifted_columns']]}; rows flagged {len(flagged)}, in the "
        f"new cluster {hit} (recall {hit / len(moved):.3f}, "
        f"precision {hit / max(len(flagged), 1):.3f})"
    )
    return {
        "rows_per_split": n,
        "moved_rows": len(moved),
        "split_drift_seconds": rep.outcomes[0].seconds,
        "embedding_auc": emb["auc"],
        "embedding_p_value": emb["p_value"],
        "embedding_drifted": emb["drifted"],
        "drifted_columns": [c["column"] for c in info["drifted_columns"]],
        "rows_flagged": len(flagged),
        "flagged_in_new_cluster": int(hit),
        "recall": hit / len(moved),
        "precision": hit / max(len(flagged), 1),
    }


def random_halves(seeds: int = 400) -> dict:
    """How often split_drift's column tests call a random half of one file drifting: 1,600 rows,
    20 columns (12 numeric, 6 categorical, a binary and a 4-valued one) and a label, split at
    random, with and without the Benjamini-Hochberg correction."""
    from datacure.auditor.drift import benjamini_hochberg, column_test

    t0 = time.perf_counter()
    with_bh = without = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        n = 1600
        cols = [(rng.normal(size=n), True) for _ in range(12)]
        cols += [(rng.choice(list("abcd"), n), False) for _ in range(6)]
        cols += [(rng.integers(0, 2, n), True), (rng.integers(0, 4, n), True)]
        cols += [(rng.integers(0, 3, n).astype(str), False)]
        half = rng.random(n) < 0.5
        p = np.array([column_test(v[half], v[~half], num, 0.1)["p_value"] for v, num in cols])
        with_bh += bool((benjamini_hochberg(p) < 0.05).any())
        without += bool((p < 0.05).any())
    print(
        f"\nRandom halves of one file ({seeds} seeds, 21 tests each, "
        f"{time.perf_counter() - t0:.0f} s): called drifting {with_bh / seeds:.3f} with "
        f"Benjamini-Hochberg, {without / seeds:.3f} without"
    )
    return {
        "seeds": seeds,
        "tests_per_split": 21,
        "called_drifting_with_bh": with_bh / seeds,
        "called_drifting_without": without / seeds,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the plants")
    ap.add_argument("--families", default="gsm8k,exam")
    ap.add_argument("--quick", action="store_true", help="seed 0, no AG News (a few minutes)")
    ap.add_argument("--name", help="results file stem (default: contamination[_quick])")
    ap.add_argument("--skip-agnews", action="store_true")
    ap.add_argument("--scale", type=int, default=0, help="run the scale benchmark with N rows")
    ap.add_argument("--drift", type=int, default=0, help="run the drift benchmark with N rows")
    ap.add_argument("--agnews", action="store_true", help="only leakage on NoisyAG-News")
    ap.add_argument("--scale-audit", help=argparse.SUPPRESS)
    ap.add_argument("--ngram-memory", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scale_audit:
        return _scale_audit(args.scale_audit)
    if args.ngram_memory:
        return _ngram_memory(args.ngram_memory)
    import os

    from common import write_results

    started = time.perf_counter()
    load = os.getloadavg()[0]
    machine_note = f"2 shared cores, load average {load:.1f} at the start: seconds indicative only"
    if args.scale:
        return write_results(
            args.name or "contamination_scale",
            scale(args.scale),
            inputs={"rows": args.scale, "benchmark_items": SCALE_BENCH, "dim": SCALE_DIM},
            notes=[
                "synthetic text and low-rank vectors, 1,000 verbatim and 1,000 near-vector plants",
                machine_note,
            ],
            started=started,
            title="contamination at scale (synthetic)",
        )
    if args.drift:
        return write_results(
            args.name or "split_drift",
            {"drift": drift(args.drift), "random_halves": random_halves()},
            inputs={"rows_per_split": args.drift, "dim": SCALE_DIM, "random_halves_seeds": 400},
            notes=[machine_note],
            started=started,
            title="split_drift: a planted new cluster, and random halves of one file",
        )
    if args.agnews:
        return write_results(
            args.name or "leakage_noisy_ag_news",
            agnews(),
            inputs={
                "train": "noisy_ag_news train_10k.csv",
                "test": "noisy_ag_news test.csv",
                "embedding": "all-MiniLM-L6-v2",
            },
            notes=[machine_note],
            started=started,
            title="leakage: NoisyAG-News test against train",
        )
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    names = args.families.split(",")
    res = families(seeds, names, file_cache=True)
    notes = [n for name in names for n in res[name].pop("notes", [])]
    notes.append(
        f"2 shared cores, load average {load:.1f} at the start: seconds are indicative only"
    )
    write_results(
        args.name or ("contamination_quick" if args.quick else "contamination"),
        {"families": res, "tables": tables(res)},
        inputs={"families": names, "seeds": seeds, "embedding": "all-MiniLM-L6-v2"},
        notes=notes,
        started=started,
    )
    if not (args.skip_agnews or args.quick):
        write_results(
            "leakage_noisy_ag_news",
            agnews(),
            inputs={
                "train": "noisy_ag_news train_10k.csv",
                "test": "noisy_ag_news test.csv",
                "embedding": "all-MiniLM-L6-v2",
            },
            notes=[machine_note],
        )


if __name__ == "__main__":
    main()
