"""`datacure serve`: the JSON API and pages on a real server on a loopback port (a free port
picked by the OS), the security cases, two reviewers at once, and an audit writing the store
while the app is in use.

The store is `seed_audited_store` (label, outlier, drift and spurious flags with edits and
slices) plus a planted duplicate pair, a planted leak, a kNN graph and a row whose text is a
script that must be shown, never run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_report import seed_audited_store

from datacure.serve import serve
from datacure.store import Store

SCRIPT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def _add_knn(st, key: str = "test", k: int = 10) -> None:
    rid, vec = st.load_embeddings(key)
    v = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    dist = (1 - np.take_along_axis(sim, idx, 1)).astype(np.float32)
    tbl = pa.table(
        {
            "row_id": pa.array(rid),
            "neighbors": pa.FixedSizeListArray.from_arrays(pa.array(rid[idx].reshape(-1)), k),
            "distances": pa.FixedSizeListArray.from_arrays(pa.array(dist.reshape(-1)), k),
        }
    )
    st.con.register("_knn", tbl)
    st.execute(
        f"CREATE TABLE knn_{key}_cosine_s AS SELECT row_id, neighbors::BIGINT[{k}] AS neighbors,"
        f" distances::FLOAT[{k}] AS distances FROM _knn"
    )
    st.con.unregister("_knn")
    st.execute(
        f"INSERT INTO knn_graphs VALUES ('{key}_cosine_s', '{key}', {k}, 'cosine', 's', "
        f"{len(rid)}, 'flat', 1.0, 0.0, now())"
    )


def seed_serve_store(path: Path, n: int = 600) -> dict:
    """The seeded audited store plus planted partners, a kNN graph and a script row."""
    t = seed_audited_store(path, n=n)
    st = t["store"]
    ids = st.fetchall("SELECT row_id, split FROM samples ORDER BY row_id")
    flagged = {r[0] for r in st.fetchall("SELECT row_id FROM issues WHERE is_issue")}
    train = [r for r, s in ids if s == "train" and r not in flagged]
    test = [r for r, s in ids if s == "test" and r not in flagged]
    dup_a, dup_b, leak_test, leak_train = train[0], train[1], test[0], train[2]
    with st.transaction():
        st.execute(
            "UPDATE samples SET text = (SELECT text FROM samples WHERE row_id = ?) "
            "WHERE row_id IN (?, ?)",
            [dup_a, dup_b, leak_train],
        )
        st.execute(
            "UPDATE samples SET text = (SELECT text FROM samples WHERE row_id = ?) "
            "WHERE row_id = ?",
            [dup_a, leak_test],
        )
        st.execute(
            "INSERT INTO issues SELECT 1, 'exact_duplicate', row_id, row_id IN (?, ?), "
            "CASE WHEN row_id IN (?, ?) THEN 0.5 ELSE 1.0 END, "
            "CASE WHEN row_id = ? THEN json_object('set_id', ?, 'members', [?], 'set_size', 2) "
            "WHEN row_id = ? THEN json_object('set_id', ?, 'members', [?], 'set_size', 2) END "
            "FROM samples",
            [dup_a, dup_b, dup_a, dup_b, dup_a, dup_a, dup_b, dup_b, dup_a, dup_a],
        )
        st.execute(
            "INSERT INTO issues SELECT 1, 'leakage', row_id, row_id = ?, "
            "CASE WHEN row_id = ? THEN 0.0 ELSE 1.0 END, "
            "CASE WHEN row_id = ? THEN json_object('partners', [?], 'partner_splits', "
            "['train'], 'similarity', [1.0], 'kind', 'exact') END FROM samples",
            [leak_test, leak_test, leak_test, leak_train],
        )
        for aud in ("exact_duplicate", "leakage"):
            st.execute(
                "INSERT INTO issue_summary SELECT 1, ?, 0.9, count(*) FILTER (WHERE is_issue), "
                "'{}' FROM issues WHERE auditor = ? AND run_id = 1",
                [aud, aud],
            )
        script_row = int(
            st.scalar(
                "SELECT row_id FROM issues WHERE auditor = 'label' AND is_issue "
                "ORDER BY score DESC LIMIT 1"
            )
        )
        st.execute("UPDATE samples SET text = ? WHERE row_id = ?", [SCRIPT, script_row])
        _add_knn(st)
        st.execute("DELETE FROM reviews")
    st.close()
    return {
        **t,
        "store": None,
        "path": Path(path),
        "dup": (dup_a, dup_b),
        "leak": (leak_test, leak_train),
        "script_row": script_row,
    }


class Client:
    """A tiny HTTP client on urllib: JSON in and out, status and headers kept."""

    def __init__(self, base: str, token: str | None = None):
        self.base = base.split("?")[0].rstrip("/")
        self.token = token

    def request(self, method, path, body=None, headers=None, raw=False):
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if self.token:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        req = urllib.request.Request(self.base + path, data=data, headers=hdrs, method=method)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=60) as r:
                status, head, payload = r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            status, head, payload = e.code, dict(e.headers), e.read()
        if raw or not head.get("content-type", "").startswith("application/json"):
            return status, head, payload
        return status, head, json.loads(payload)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body=body, **kw)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    return seed_serve_store(tmp / "s.duckdb")


@pytest.fixture(scope="module")
def server(seeded):
    # linger 0: the app holds no connection between requests, so this test process can open
    # the store (with another DuckDB configuration) to check what the app wrote
    h = serve(seeded["path"], port=0, background=True, busy_wait=0.3, linger=0)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url)


def _db(seeded):
    """Look at the store from the test while the server runs (it holds no connection)."""
    return Store(seeded["path"], read_only=True)


# --- the API -------------------------------------------------------------------------------------
def test_issues_are_filtered_worst_first_and_paginated(client, seeded):
    st, _h, d = client.get("/api/issues?auditor=label&limit=5")
    assert st == 200 and d["run_id"] == 1
    with _db(seeded) as db:
        total = db.scalar("SELECT count(*) FROM issues WHERE auditor = 'label' AND is_issue")
        order = [
            r[0]
            for r in db.fetchall(
                "SELECT row_id FROM issues WHERE auditor = 'label' AND is_issue "
                "ORDER BY score, row_id"
            )
        ]
        split_of = dict(db.fetchall("SELECT row_id, split FROM samples"))
    assert d["total"] == total and len(d["rows"]) == 5
    assert [r["row_id"] for r in d["rows"]] == order[:5]
    assert all(r["auditor"] == "label" and r["suggested_label"] for r in d["rows"])
    _, _, page2 = client.get("/api/issues?auditor=label&limit=5&offset=5")
    assert [r["row_id"] for r in page2["rows"]] == order[5:10]
    _, _, test_only = client.get("/api/issues?split=test&limit=500")
    assert test_only["rows"] and all(split_of[r["row_id"]] == "test" for r in test_only["rows"])
    _, _, lo = client.get("/api/issues?min_score=0.05&max_score=0.15&limit=500")
    assert lo["rows"] and all(0.05 <= r["score"] <= 0.15 for r in lo["rows"])
    _, _, found = client.get("/api/issues?q=" + urllib.request.quote("<script>"))
    assert [r["row_id"] for r in found["rows"]] == [seeded["script_row"]]
    st, _, bad = client.get("/api/issues?min_score=abc")
    assert st == 400 and "not a number" in bad["error"]


def test_row_shows_partners_neighbours_and_findings(client, seeded):
    a, b = seeded["dup"]
    st, _, d = client.get(f"/api/rows/{a}")
    assert st == 200
    dup = next(f for f in d["flags"] if f["auditor"] == "exact_duplicate")
    assert dup["is_issue"] and [p["row_id"] for p in dup["partners"]] == [b]
    assert dup["partners"][0]["text"] == d["row"]["text"]
    assert len(d["neighbours"]) == 10 and all("label" in n for n in d["neighbours"])
    leak_test, leak_train = seeded["leak"]
    _, _, lk = client.get(f"/api/rows/{leak_test}")
    leak = next(f for f in lk["flags"] if f["auditor"] == "leakage")
    assert [(p["row_id"], p["split"]) for p in leak["partners"]] == [(leak_train, "train")]
    st, _, html = client.get(f"/rows/{leak_test}")
    assert st == 200 and f'href="/rows/{leak_train}"' in html.decode()
    # a spurious flag shows its group table (the report's heatmap view)
    with _db(seeded) as db:
        sp = db.scalar(
            "SELECT min(row_id) FROM issues WHERE auditor = 'spurious_attribute' AND is_issue"
        )
    _, _, html = client.get(f"/rows/{sp}")
    assert 'data-heatmap="source"' in html.decode()
    st, _, nf = client.get("/api/rows/99999999")
    assert st == 404 and "no row" in nf["error"]


def test_every_page_renders(client):
    for path in ("/", "/issues", "/issues?auditor=label&reviewed=no", "/findings", "/sql", "/map"):
        st, head, body = client.get(path)
        assert st == 200, (path, body[:500])
        assert head["content-type"].startswith("text/html")
    st, head, js = client.get("/static/app.js")
    assert st == 200 and "javascript" in head["content-type"] and b"textContent" in js
    st, head, _ = client.get("/static/app.css")
    assert st == 200 and head["content-type"].startswith("text/css")
    st, _, body = client.get("/edits?status=pending")
    assert st == 200 and b"planned edits" in body.lower()
    _, _, summ = client.get("/api/summary")
    assert {a["name"] for a in summ["auditors"]} >= {"label", "exact_duplicate", "leakage"}
    _, _, m = client.get("/api/map")
    assert len(m["row_id"]) == len(m["x"]) == 600
    _, _, f = client.get("/api/findings")
    assert f["slices"] and any(a["name"] == "split_drift" for a in f["auditors"])


def test_reviews_write_through_the_library_and_export_honours_them(client, seeded, tmp_path):
    import polars as pl

    from datacure.repair.export import export

    with _db(seeded) as db:
        rows = [
            r[0]
            for r in db.fetchall(
                "SELECT row_id FROM issues WHERE auditor = 'label' AND is_issue "
                "AND row_id IN (SELECT row_id FROM edits WHERE action = 'relabel') "
                "ORDER BY score, row_id LIMIT 3"
            )
        ]
        given = dict(db.fetchall("SELECT row_id, label FROM samples"))
        planned = dict(db.fetchall("SELECT row_id, new_label FROM edits WHERE action='relabel'"))
    a, r, rel = rows
    typed = next(c for c in ("world", "sports", "business", "scitech") if c not in (given[rel],))
    for row_id, decision, extra in ((a, "accept", {}), (r, "reject", {})):
        st, _, res = client.post(
            "/api/reviews", {"row_id": row_id, "auditor": "label", "decision": decision, **extra}
        )
        assert st == 200 and res["flags"] == 1, res
    st, _, res = client.post(
        "/api/reviews",
        {"row_id": rel, "auditor": "label", "decision": "relabel", "new_label": typed},
    )
    assert st == 200 and res["edits_changed"] >= 1
    # a bad label is refused and changes nothing
    st, _, bad = client.post(
        "/api/reviews",
        {"row_id": rel, "auditor": "label", "decision": "relabel", "new_label": "nope"},
    )
    assert st == 400 and "not a label" in bad["error"]
    st, _, bad = client.post("/api/reviews", {"row_id": 1, "auditor": "label"})
    assert st == 400 and "unknown review decision" in bad["error"]
    with _db(seeded) as db:
        rev = {
            (x, y): (d, nl)
            for x, y, d, nl in db.fetchall(
                "SELECT row_id, auditor, decision, new_label FROM reviews"
            )
        }
        assert rev[(a, "label")] == ("accept", None)
        assert rev[(r, "label")] == ("reject", None)
        assert rev[(rel, "label")] == ("relabel", typed)
        export(db, tmp_path / "out", fmt="csv")
    out = pl.concat([pl.read_csv(f) for f in sorted((tmp_path / "out").glob("*.csv"))])
    got = dict(zip(out["datacure_row_id"].to_list(), out["label"].to_list()))
    assert got[a] == planned[a] and got[r] == given[r] and got[rel] == typed


def test_bulk_review_of_a_filtered_selection(client, seeded):
    flt = {"auditor": "spurious_attribute", "split": "test"}
    _, _, before = client.get("/api/issues?auditor=spurious_attribute&split=test&limit=1")
    st, _, res = client.post("/api/reviews", {"filter": flt, "decision": "reject"})
    assert st == 200 and res["flags"] == before["total"] > 0
    with _db(seeded) as db:
        n = db.scalar(
            "SELECT count(*) FROM reviews r JOIN samples s USING (row_id) "
            "WHERE r.auditor = 'spurious_attribute' AND s.split = 'test' AND decision = 'reject'"
        )
    assert n == before["total"]
    _, _, after = client.get("/api/issues?auditor=spurious_attribute&split=test&reviewed=no")
    assert after["total"] == 0


def test_sql_console_is_read_only_and_paginated(client, seeded, tmp_path):
    st, _, d = client.post(
        "/api/sql", {"query": "SELECT row_id FROM samples ORDER BY row_id", "limit": 7}
    )
    assert st == 200 and d["columns"] == ["row_id"] and len(d["rows"]) == 7 and d["more"]
    _, _, d2 = client.post(
        "/api/sql", {"query": "SELECT row_id FROM samples ORDER BY row_id", "limit": 7, "offset": 7}
    )
    assert d2["rows"][0][0] == d["rows"][-1][0] + 1
    st, head, csv = client.post(
        "/api/sql", {"query": "SELECT row_id, split FROM samples LIMIT 3", "format": "csv"}
    )
    assert st == 200 and head["content-type"].startswith("text/csv")
    assert csv.decode().splitlines()[0] == "row_id,split" and len(csv.decode().splitlines()) == 4
    target = tmp_path / "leak.csv"
    for q in (
        "DELETE FROM reviews",
        "CREATE TABLE x (i INT)",
        "SELECT * FROM read_text('/etc/passwd')",
        f"COPY (SELECT 1) TO '{target}'",
        "ATTACH ':memory:' AS m2; SELECT 1",
        "INSTALL httpfs",
        "SET enable_external_access = true",
    ):
        st, _, err = client.post("/api/sql", {"query": q})
        assert st == 400, (q, err)
        assert err["error"].startswith("SQL error") or "empty" in err["error"], err
    assert not target.exists()
    st, _, err = client.post("/api/sql", {"query": ""})
    assert st == 400 and "empty" in err["error"]


# --- security ----------------------------------------------------------------------------------
def test_user_text_is_escaped_on_every_page(client, seeded):
    row = seeded["script_row"]
    for path in (f"/rows/{row}", "/issues?q=" + urllib.request.quote("window.__pwned")):
        _, head, body = client.get(path)
        html = body.decode()
        assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
        assert SCRIPT not in html and "<script>window" not in html
        assert "script-src 'self'" in head["content-security-policy"]


def test_state_changes_need_json_from_the_same_origin(client, server):
    body = {"row_id": 1, "auditor": "label", "decision": "reject"}
    form = urllib.parse.urlencode(body).encode()
    st, _, err = client.post(
        "/api/reviews", form, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert st == 403 and "JSON" in err["error"]
    st, _, err = client.post("/api/reviews", body, headers={"Origin": "http://evil.example"})
    assert st == 403 and "cross-origin" in err["error"]
    st, _, err = client.post("/api/reviews", body, headers={"Sec-Fetch-Site": "cross-site"})
    assert st == 403 and "cross-site" in err["error"]
    st, _, _ = client.get("/api/reviews")
    assert st == 405
    # a page on another site that rebinds its DNS name to 127.0.0.1 is refused
    st, _, err = client.get("/api/summary", headers={"Host": f"evil.example:{server.port}"})
    assert st == 403 and "Host" in err["error"]


def test_other_addresses_need_the_token(seeded):
    h = serve(seeded["path"], host="0.0.0.0", port=0, background=True)
    try:
        assert h.token and len(h.token) >= 24 and f"?token={h.token}" in h.url
        local = f"http://127.0.0.1:{h.port}/"
        anon = Client(local)
        for path in ("/", "/api/summary", "/static/app.js", f"/thumb/{seeded['dup'][0]}"):
            st, _, _ = anon.get(path)
            assert st == 401, path
        st, _, _ = anon.get("/api/summary", headers={"Authorization": "Bearer wrong"})
        assert st == 401
        st, _, d = Client(local, token=h.token).get("/api/summary")
        assert st == 200 and d["run"]["run_id"] == 1
        st, _, _ = anon.get("/api/summary", headers={"X-Datacure-Token": h.token})
        assert st == 200
        # the printed URL sets an HttpOnly, SameSite=Strict cookie and drops the token
        st, head, _ = anon.get(f"/issues?auditor=label&token={h.token}")
        assert st == 303 and head["location"] == "/issues?auditor=label"
        cookie = head["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        st, _, _ = anon.get("/api/summary", headers={"Cookie": cookie.split(";")[0]})
        assert st == 200
        # a token does not replace the same-origin check for changes
        st, _, _ = Client(local, token=h.token).post(
            "/api/reviews",
            {"row_id": 1, "auditor": "label", "decision": "reject"},
            headers={"Origin": "http://evil.example"},
        )
        assert st == 403
    finally:
        h.stop()


def test_images_only_for_rows_of_the_store(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    for i, c in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        Image.new("RGB", (40, 30), c).save(root / f"img{i}.png")
    t = seed_audited_store(tmp_path / "im.duckdb", n=60, image_root=root)
    t["store"].close()
    with serve(tmp_path / "im.duckdb", port=0, background=True) as h:
        c = Client(h.url)
        st, head, png = c.get("/thumb/0?size=m")
        assert st == 200 and head["content-type"] == "image/png" and png[:4] == b"\x89PNG"
        _, _, d = c.get("/api/issues?limit=3")
        assert all(r["has_image"] for r in d["rows"])
        assert c.get("/thumb/123456")[0] == 404  # no such row
        for path in (
            "/thumb/..%2F..%2Fetc%2Fpasswd",
            "/thumb/0/../../etc/passwd",
            "/static/../app.py",
            "/static/%2e%2e/app.py",
        ):
            st, _, body = c.get(path)
            assert st == 404, (path, st)
            assert b"root:" not in body and b"create_app" not in body


# --- concurrency -------------------------------------------------------------------------------
def test_two_reviewers_at_once_lose_no_decision(client, seeded):
    with _db(seeded) as db:
        flags = db.fetchall(
            "SELECT row_id, auditor FROM issues WHERE is_issue AND (row_id, auditor) NOT IN "
            "(SELECT row_id, auditor FROM reviews) ORDER BY row_id, auditor LIMIT 20"
        )
    assert len(flags) >= 20
    shared, own = flags[:6], flags[6:20]
    plans = {
        "alice": [(f, "accept") for f in shared + own[0::2]],
        "bob": [(f, "reject") for f in shared + own[1::2]],
    }
    errors: list = []

    def reviewer(name):
        for (row_id, auditor), decision in plans[name]:
            st, _, res = client.post(
                "/api/reviews", {"row_id": row_id, "auditor": auditor, "decision": decision}
            )
            if st != 200:
                errors.append((name, st, res))

    threads = [threading.Thread(target=reviewer, args=(n,)) for n in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    with _db(seeded) as db:
        got = {
            (r, a): d
            for r, a, d in db.fetchall("SELECT row_id, auditor, decision FROM reviews")
            if (r, a) in set(flags)
        }
    assert len(got) == 20  # every decision is there, one per flag
    assert all(got[f] == "accept" for f in own[0::2])
    assert all(got[f] == "reject" for f in own[1::2])
    assert all(got[f] in ("accept", "reject") for f in shared)  # the later one wins


_HOLDER = """
import sys
from datacure.store import Store
st = Store(sys.argv[1])  # the writer's lock, as `datacure audit` holds it
with st.transaction():
    st.execute("INSERT INTO runs SELECT 2, now(), now(), '[]', '{}', 'test', 'ok'")
    st.execute("INSERT INTO issues SELECT 2, auditor, row_id, is_issue, score, details "
               "FROM issues WHERE run_id = 1")
    st.execute("INSERT INTO issue_summary SELECT 2, auditor, score, num_issues, info "
               "FROM issue_summary WHERE run_id = 1")
    print("locked", flush=True)
    sys.stdin.readline()
st.close()
print("done", flush=True)
"""


def _readline(proc, deadline_s: float = 60) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(deadline_s)
    assert out, "the helper process said nothing"
    return out[0].strip()


def test_a_writer_elsewhere_gives_busy_then_the_latest_run(seeded, tmp_path):
    path = tmp_path / "w.duckdb"
    shutil.copy(seeded["path"], path)
    with serve(path, port=0, background=True, busy_wait=0.2, linger=0) as h:
        c = Client(h.url)
        st, _, before = c.get("/api/issues?auditor=label&limit=3")
        assert st == 200 and before["run_id"] == 1
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert _readline(proc) == "locked"
            # a page seen before: the last good answer, marked stale
            st, head, stale = c.get("/api/issues?auditor=label&limit=3")
            assert st == 200 and head.get("x-datacure-stale") == "1" and stale == before
            # anything else: 503 with Retry-After and the reason
            st, head, err = c.get("/api/issues?auditor=outlier")
            assert st == 503 and head["retry-after"] and "busy" in err["error"]
            st, _, html = c.get("/issues?auditor=outlier")
            assert st == 503 and b'data-retry="2"' in html
            flag = before["rows"][0]
            body = {"row_id": flag["row_id"], "auditor": "label", "decision": "reject"}
            st, head, err = c.post("/api/reviews", body)
            assert st == 503 and head["retry-after"]  # the page's script retries this
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert _readline(proc) == "done"
        finally:
            proc.stdin.close()
            proc.wait(60)
        st, head, after = c.get("/api/issues?auditor=label&limit=3")
        assert st == 200 and after["run_id"] == 2 and "x-datacure-stale" not in head
        st, _, res = c.post("/api/reviews", body)  # the retry lands
        assert st == 200 and res["flags"] == 1


def test_audit_runs_while_the_app_is_in_use(seeded, tmp_path):
    """A real `datacure audit` (waiting for the app's brief reads with DATACURE_LOCK_TIMEOUT)
    while a client reads all the time (20 ms from an answer to its next request): the app
    answers 200 or 503, never fails, and shows the new run once the audit has finished.
    (Connections per request here: with the default linger a client that never pauses would
    hold the store; see the linger test.)"""
    path = tmp_path / "a.duckdb"
    shutil.copy(seeded["path"], path)
    statuses: list[int] = []
    stop = threading.Event()
    with serve(path, port=0, background=True, busy_wait=0.2, linger=0) as h:
        c = Client(h.url)

        def poll():
            while not stop.is_set():
                statuses.append(c.get("/api/issues?auditor=label&limit=5&count=0")[0])
                stop.wait(0.02)  # a busy client, not one that leaves the writer no gap at all

        statuses.append(c.get("/api/issues?auditor=label&limit=5&count=0")[0])
        t = threading.Thread(target=poll)
        t.start()
        env = {**os.environ, "DATACURE_LOCK_TIMEOUT": "60"}
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "datacure",
                "-q",
                "audit",
                "--db",
                str(path),
                "--auditors",
                "class_imbalance,null",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        stop.set()
        t.join(60)
        assert res.returncode == 0, res.stderr
        assert statuses and set(statuses) <= {200, 503}, set(statuses)
        st, _, summ = c.get("/api/summary")
        assert st == 200 and summ["run"]["run_id"] == 2
        assert {a["name"] for a in summ["auditors"]} == {"class_imbalance", "null"}


_WRITER = """
import sys
from datacure.store import Store
from datacure.store.errors import StoreBusyError
try:
    Store(sys.argv[1]).close()
except StoreBusyError as exc:
    print("busy:", exc.problem)
    sys.exit(3)
print("wrote")
"""


def test_linger_holds_the_store_while_browsing_then_lets_writers_in(seeded, tmp_path):
    """With a linger the app keeps one read-only connection after a read: a writer elsewhere is
    told the store is busy (or waits, with DATACURE_LOCK_TIMEOUT), and gets in once the app has
    been quiet for the linger or has stopped."""
    path = tmp_path / "l.duckdb"
    shutil.copy(seeded["path"], path)

    def writer(**env):
        return subprocess.run(
            [sys.executable, "-c", _WRITER, str(path)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    with serve(path, port=0, background=True, linger=600) as h:
        assert Client(h.url).get("/api/issues?limit=5")[0] == 200
        res = writer()
        assert res.returncode == 3 and "open for reading" in res.stdout, res.stdout + res.stderr
        # a review closes the lingering connection before it writes
        _, _, d = Client(h.url).get("/api/issues?auditor=label&limit=1")
        flag = d["rows"][0]
        st, _, _ = Client(h.url).post(
            "/api/reviews", {"row_id": flag["row_id"], "auditor": "label", "decision": "reject"}
        )
        assert st == 200
    assert writer().returncode == 0  # stopped: nothing held
    with serve(path, port=0, background=True, linger=0.2) as h:
        assert Client(h.url).get("/api/issues?limit=5")[0] == 200
        # the connection is dropped 0.2 s after the read: a writer that waits gets in
        res = writer(DATACURE_LOCK_TIMEOUT="60")
        assert res.returncode == 0 and "wrote" in res.stdout, res.stdout + res.stderr


# --- the command ---------------------------------------------------------------------------------
def test_cli_serve_prints_the_url_and_stops_on_ctrl_c(seeded):
    proc = subprocess.Popen(
        [sys.executable, "-m", "datacure", "serve", "--db", str(seeded["path"]), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _readline(proc)
        assert line.startswith("datacure serve: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1]
        deadline = time.monotonic() + 30
        while True:  # readiness: the socket is bound before the line is printed
            st, _, d = Client(url).get("/api/health")
            if st == 200 or time.monotonic() > deadline:
                break
        assert st == 200 and d["ok"]
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
        err = proc.stderr.read()
        assert rc == 0, err
        assert "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serve_bad_input(tmp_path, seeded):
    from typer.testing import CliRunner

    from datacure import cli

    res = CliRunner().invoke(cli.app, ["serve", "--db", str(tmp_path / "none.duckdb")])
    assert res.exit_code != 0 and not (tmp_path / "none.duckdb").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "datacure", "serve", "--db", str(tmp_path / "none.duckdb")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no store at" in proc.stderr
    with serve(seeded["path"], port=0, background=True) as h:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "datacure",
                "serve",
                "--db",
                str(seeded["path"]),
                "--port",
                str(h.port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and "cannot listen" in proc.stderr


def test_api_serve_in_the_background(seeded):
    import datacure as dc

    h = dc.open(seeded["path"]).serve(port=0, background=True)
    try:
        st, _, d = Client(h.url).get("/api/health")
        assert st == 200 and d["run_id"] == 1
    finally:
        h.stop()


def test_a_store_without_an_audit_still_serves(tmp_path):
    import polars as pl
    from helpers import make_store

    st = make_store(
        tmp_path / "plain.duckdb",
        pl.DataFrame({"text": ["a first text", "a second text"], "label": ["x", "y"]}),
        text="text",
    )
    st.close()
    with serve(tmp_path / "plain.duckdb", port=0, background=True) as h:
        c = Client(h.url)
        st_, _, html = c.get("/")
        assert st_ == 200 and b"No audit yet" in html
        for path in ("/issues", "/findings", "/edits", "/rows/0", "/map"):
            assert c.get(path)[0] == 200, path
        _, _, d = c.get("/api/issues")
        assert d["run_id"] is None and d["rows"] == []
        _, _, m = c.get("/api/map")
        assert m is None
        st_, _, err = c.post(
            "/api/reviews", {"row_id": 0, "auditor": "label", "decision": "reject"}
        )
        assert st_ == 400 and "no audit run" in err["error"]
        assert c.get("/api/issues?run=7")[0] == 404
