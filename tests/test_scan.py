"""engine/scan.py: one pass over the partitions' products collecting several top-k lists gives
each the lists a scan of its own would give (the Ray search's neighbours among the audited rows
and leakage's nearest rows in other splits, from the same products)."""

from __future__ import annotations

import numpy as np
import pytest

from datacure.engine import partition as P
from datacure.engine import scan as PS


def _data(n: int, d: int, seed: int = 0):
    """Clustered normalised rows with a few exact repeats (ties), their partitions and probes,
    three splits, and a fifth of the rows not audited."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(60, d))
    x = centres[rng.integers(0, 60, n)] + rng.normal(scale=0.4, size=(n, d))
    x[rng.choice(n, 50, replace=False)] = x[rng.choice(n, 50, replace=False)]
    x = P.normalize(x.astype(np.float32))
    basis = P.train_basis(x[:1000], 16)
    z = P.project(x, basis)
    cent = P.train_centroids(z[rng.choice(n, 600, replace=False)], 30, seed)
    part = P.assign(z, cent)
    probes = P.probes(z, cent, 4)
    split = rng.choice(np.array([0, 1, 2], np.int16), n, p=[0.7, 0.2, 0.1])
    audited = rng.random(n) > 0.2
    return x, z, part, probes, split, audited


@pytest.mark.parametrize("d", [16, 48])  # full dimension, and candidates from a projection
def test_one_pass_gives_each_list_its_own_scan(d):
    x, z, part, probes, split, audited = _data(3000, d)
    q = np.flatnonzero(audited)[::2]
    qp = np.ascontiguousarray(probes[q])
    examined = np.isin(split[q], [1, 2])
    wants = [
        PS.Want(10, cols=audited),
        PS.Want(5, rows=examined, split=split, exclude_self=False),
    ]
    grouped = PS.group_rows(part, np.arange(len(x)))
    (pos, sim), (lpos, lsim) = PS.scan_wants(x, z, grouped, q, qp, wants, 2)
    # the neighbours: the scan of the audited rows alone
    aud = np.flatnonzero(audited)
    want_pos, want_sim = P.scan(x, z, part, aud, q, qp, 10, candidates=2)
    assert np.array_equal(pos, want_pos) and np.array_equal(sim, want_sim)
    assert audited[pos[pos >= 0]].all() and not (pos == q[:, None]).any()
    # leakage's: per examined split, the scan of the other splits' rows (audited or not)
    assert lpos.shape == (int(examined.sum()), 5)
    for s in (1, 2):
        sel = split[q[examined]] == s
        others = np.flatnonzero(split != s)
        qs = q[examined][sel]
        ep, es = P.scan(x, z, part, others, qs, qp[examined][sel], 5, False, candidates=2)
        assert np.array_equal(lpos[sel], ep) and np.array_equal(lsim[sel], es)
        assert (split[lpos[sel][lpos[sel] >= 0]] != s).all()
    assert (lpos >= 0).mean() > 0.9 and not audited.all()  # the test has teeth


def test_no_queries_of_a_list_and_no_allowed_rows():
    """A list with no queries (no examined split in the group) or no rows it may return gives
    -1 / -inf rows of its shape, and the other lists are unchanged."""
    x, z, part, probes, split, audited = _data(800, 16, seed=1)
    q = np.arange(0, 800, 3)
    qp = np.ascontiguousarray(probes[q])
    grouped = PS.group_rows(part, np.arange(len(x)))
    none = np.zeros(len(q), bool)
    out = PS.scan_wants(
        x,
        z,
        grouped,
        q,
        qp,
        [PS.Want(4), PS.Want(3, rows=none), PS.Want(3, cols=np.zeros(len(x), bool))],
    )
    assert np.array_equal(out[0][0], P.scan(x, z, part, np.arange(len(x)), q, qp, 4)[0])
    assert out[1][0].shape == (0, 3)
    assert out[2][0].shape == (len(q), 3) and (out[2][0] == -1).all()
    assert np.isneginf(out[2][1]).all()


def test_probes_are_the_nearest_centroids_in_order():
    """`partition.probes` (blocks of rows against every centroid into a FAISS heap) returns each
    row's w nearest centroids, nearest first, as faiss.knn does: the same similarities, and
    the same partitions where no two are tied; its first probe is `assign`'s partition."""
    from datacure.store.knn_exact import load_faiss

    faiss = load_faiss()
    rng = np.random.default_rng(3)
    z = P.normalize(rng.normal(size=(5000, 24)).astype(np.float32))
    cent = P.normalize(rng.normal(size=(700, 24)).astype(np.float32))
    got = P.probes(z, cent, 30)
    want_sims, want = faiss.knn(z, cent, 30, metric=faiss.METRIC_INNER_PRODUCT)
    sims = np.einsum("nd,nkd->nk", z, cent[got])
    assert got.dtype == np.int32 and got.shape == (5000, 30)
    assert np.allclose(sims, want_sims, atol=1e-5) and (np.diff(sims, axis=1) <= 1e-6).all()
    assert (got == want).mean() > 0.999 and np.array_equal(got[:, 0], P.assign(z, cent))
    assert all(len(set(r)) == 30 for r in got[:200].tolist())
    assert P.probes(z, cent, 1000).shape == (5000, 700)  # w capped at the centroids
    assert P.probes(z[:0], cent, 5).shape == (0, 5)
