"""FAISS and the exact path of every kNN search: the thread budget, GPU detection, L2
normalisation, exact top-k by inner product in blocks of queries, and dropping each row from its
own neighbours in a self-graph. `store/knn.py` (the public API) and `store/knn_approx.py` (the
approximate indexes) build on it.

Threads: FAISS and BLAS use the CPUs this process may run on (the affinity mask, capped by a
cgroup CPU quota when there is one; one thread when the machine is already overloaded), or
`DATACURE_THREADS` when set.
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np

from .errors import MissingDependencyError

EXACT_QUERY_BLOCK = 16_384  # queries per FAISS call in an exact search
# a found neighbour this close to the k-th exact similarity ties with it (float32 products of unit
# vectors computed by different kernels differ by about 1e-7)
TIE_TOLERANCE = 1e-5


def num_threads() -> int:
    """CPUs to use: `DATACURE_THREADS`, else the affinity mask capped by a cgroup quota, and one
    when the machine is already oversubscribed (1-minute load average above the CPU count):
    OpenMP and BLAS threads spin while they wait for each other, so on a busy machine two
    threads ran a 100k-row graph several times slower than one."""
    env = os.environ.get("DATACURE_THREADS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    try:  # a container limited with --cpus has all host CPUs in its mask but a quota
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    try:
        if n > 1 and os.getloadavg()[0] > n + 0.5:
            return 1
    except OSError:  # pragma: no cover - no load average here
        pass
    return max(1, n)


# the CPU features each OpenBLAS kernel family needs, best first (OPENBLAS_CORETYPE values)
OPENBLAS_CORES = (
    ("SKYLAKEX", frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})),
    ("HASWELL", frozenset({"avx2", "fma"})),
)


def openblas_core(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The best OpenBLAS kernel family this CPU runs (None off Linux, or without AVX2)."""
    try:
        with open(cpuinfo) as fh:
            flags = next((ln for ln in fh if ln.startswith("flags")), "").split(":")[-1].split()
    except OSError:
        return None
    return next((core for core, need in OPENBLAS_CORES if need <= set(flags)), None)


def load_faiss():
    """The `faiss` module. FAISS's CPU wheels bundle an OpenBLAS that falls back to its generic
    SSE3 kernel on CPUs newer than itself (bench/openblas_kernel.py measures the cost): the first
    import names the kernel family the CPU supports (OPENBLAS_CORETYPE, read once as the library
    loads; the environment is restored after, and a value the user set is kept)."""
    import sys

    first = "faiss" not in sys.modules and "OPENBLAS_CORETYPE" not in os.environ
    core = openblas_core() if first else None
    if core:
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise MissingDependencyError(
            "FAISS is not installed", "pip install faiss-cpu (or datacure[gpu] for faiss-gpu)"
        ) from exc
    finally:
        if core:
            os.environ.pop("OPENBLAS_CORETYPE", None)
    return faiss


@contextlib.contextmanager
def _threads():
    """FAISS's OpenMP and numpy's BLAS limited to `num_threads()` for one search (OpenMP
    defaults to every CPU of the host, which oversubscribes a container with a CPU quota; an
    explicit OMP_NUM_THREADS from the user wins)."""
    faiss = load_faiss()
    n = num_threads()
    if os.environ.get("OMP_NUM_THREADS") and not os.environ.get("DATACURE_THREADS"):
        n = faiss.omp_get_max_threads()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    from threadpoolctl import threadpool_limits  # a declared dependency

    limits = threadpool_limits(n, user_api="blas")
    try:
        with limits:
            yield n
    finally:
        faiss.omp_set_num_threads(before)


def single_blas_thread():
    """numpy's BLAS on one thread for a block of many small products (an IVF scan: one per
    list), where a second thread costs more in synchronisation than it computes."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def gpu_available() -> bool:
    """Whether FAISS sees a GPU (faiss-gpu installed and a device present)."""
    if os.environ.get("DATACURE_NO_GPU", "") not in ("", "0"):
        return False
    faiss = load_faiss()
    try:
        return faiss.get_num_gpus() > 0
    except AttributeError:  # pragma: no cover - faiss-cpu builds without the symbol
        return False


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, a new array; zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def _exact(base: np.ndarray, queries: np.ndarray, k: int, use_gpu: bool):
    """Exact top-k by inner product: (sims float32 [m, k] descending, idx int64 [m, k])."""
    faiss = load_faiss()
    ip = faiss.METRIC_INNER_PRODUCT
    if use_gpu:
        res = faiss.StandardGpuResources()
        sims, idx = faiss.knn_gpu(res, queries, base, k, metric=ip)
        return sims.astype(np.float32, copy=False), idx.astype(np.int64, copy=False)
    m = len(queries)
    if m <= EXACT_QUERY_BLOCK:
        sims, idx = faiss.knn(queries, base, k, metric=ip)
        return sims.astype(np.float32, copy=False), idx.astype(np.int64, copy=False)
    sims = np.empty((m, k), np.float32)
    idx = np.empty((m, k), np.int64)
    for s in range(0, m, EXACT_QUERY_BLOCK):
        sl = slice(s, s + EXACT_QUERY_BLOCK)
        sims[sl], idx[sl] = faiss.knn(np.ascontiguousarray(queries[sl]), base, k, metric=ip)
    return sims, idx


def tie_threshold(sims: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(kq, bar) per query of descending exact similarities `sims` [m, columns] whose `valid`
    entries come first: kq, its neighbour places (k, or fewer valid entries), and the
    similarity a row needs to tie with its kq-th exact neighbour (less TIE_TOLERANCE)."""
    kq = np.minimum(valid.sum(axis=1), k)
    kth = sims[np.arange(len(sims)), np.maximum(kq - 1, 0)]
    return kq, kth - TIE_TOLERANCE


def recall_per_query(
    found_ids: np.ndarray, found_sims: np.ndarray, exact_sims: np.ndarray
) -> np.ndarray:
    """Each query's recall@k with ties counted (ANN-benchmarks' distance-based recall): the share
    of its k exact neighbours' places taken by found neighbours at least as similar as the k-th
    exact one. A found row that ties with the k-th exact neighbour is as near as it is; counted
    by id it is a miss, and on data with many equal similarities (hashed or quantised embeddings,
    near-copies) a correct graph read as a poor one. `found_ids`/`found_sims`: the graph's
    neighbours and their exact similarities [m, k] (ids -1 where none); `exact_sims`: the exact
    top-k similarities [m, k], descending (-inf where the base has fewer rows)."""
    m, k = exact_sims.shape
    if not m:
        return np.ones(0)
    kq, bar = tie_threshold(exact_sims, np.isfinite(exact_sims), k)
    hit = (found_ids[:, :k] >= 0) & (found_sims[:, :k] >= bar[:, None])
    return np.where(kq > 0, np.minimum(hit.sum(axis=1), kq) / np.maximum(kq, 1), 1.0)


def _drop_self(idx: np.ndarray, sims: np.ndarray, k: int, qpos: np.ndarray | None = None):
    """Remove each query's own position from its k+1 results (it need not come first when there
    are exact duplicates), keeping the first k of the rest. `qpos`: the base position of each
    query row (default 0..n-1)."""
    n = idx.shape[0]
    own_pos = np.arange(n) if qpos is None else qpos
    own = idx == own_pos[:, None]
    # rows where self was not returned: drop the last column instead
    own[~own.any(axis=1), -1] = True
    # keep exactly one dropped entry per row (duplicates of a position cannot occur)
    first = own.argmax(axis=1)
    own[:] = False
    own[np.arange(n), first] = True
    keep = ~own
    idx = idx[keep].reshape(n, -1)[:, :k]
    sims = sims[keep].reshape(n, -1)[:, :k]
    return idx, sims
