"""API keys come from the environment and end up nowhere else: not in a table of the store (the
DuckDB file and its WAL are grepped as bytes), not in the output of any command, not in the
report (HTML and JSON), not in the export or its manifest.

The flows that use a key run through the CLI against a local fake OpenAI-compatible server on
127.0.0.1: the contamination judge (`audit --judge-url ... --judge-key-env VAR`) and LLM text
generation (`repair --strategy generate --llm-url ... --llm-key-env VAR`). The server records the
Authorization header, so the test also proves the key was really sent (and so could leak).

Planted faults: a server that echoes the Authorization header in its error body (the key must
not be printed back), and a key with a trailing newline (an invalid header value, which
http.client reports by quoting the value).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hardening_util import run_cli
from helpers import make_store

KEY = "sk-planted-4f9c2e7a1b-DO-NOT-LEAK"
ENV = "DC_HARDENING_TEST_KEY"


class _Fake(BaseHTTPRequestHandler):
    """Chat completions: the judge gets True for texts marked JUDGE-YES; a rewrite request gets
    the text with its pronouns swapped. In `echo` mode it refuses with HTTP 401 and quotes the
    Authorization header back, as some proxies do."""

    seen: list = []
    echo = False

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        _Fake.seen.append(auth)
        if _Fake.echo:
            data = json.dumps({"error": f"invalid credentials: {auth}"}).encode()
            self.send_response(401)
        else:
            prompt = body["messages"][-1]["content"]
            if "Text B:" in prompt:
                answer = "True" if "JUDGE-YES" in prompt.split("Text B:")[1] else "False"
            else:
                text = prompt.split("Text: ", 1)[-1]
                answer = text.replace("He ", "She ").replace(" his ", " her ")
            data = json.dumps(
                {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
            ).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Fake.seen, _Fake.echo = [], False
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _judge_store(db: Path) -> None:
    """train rows 0-9 sit at cosine 0.72 to a benchmark item (the judge's band); half are marked
    JUDGE-YES. The benchmark is the split `bench`."""
    rng = np.random.default_rng(0)
    d, n_train, n_bench = 32, 200, 50
    words = np.array(
        ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    )
    bench_t = [" ".join(rng.choice(words, 20)) for _ in range(n_bench)]
    train_t = [" ".join(rng.choice(words, 25)) for _ in range(n_train)]
    bench_v = _unit(rng.normal(size=(n_bench, d)))
    train_v = _unit(rng.normal(size=(n_train, d)))
    for i in range(10):
        t = bench_v[i]
        noise = rng.normal(size=d)
        noise -= (noise @ t) * t
        train_v[i] = 0.72 * t + np.sqrt(1 - 0.72**2) * _unit(noise)
        train_t[i] = ("JUDGE-YES " if i < 5 else "JUDGE-NO ") + train_t[i]
    frame = pl.DataFrame(
        {
            "text": train_t + bench_t,
            "label": [0, 1] * ((n_train + n_bench) // 2),
            "part": ["train"] * n_train + ["bench"] * n_bench,
        }
    )
    make_store(
        db,
        frame,
        np.vstack([train_v, bench_v]).astype(np.float32),
        split_column="part",
        text="text",
    ).close()


def _review_csv(path: Path) -> None:
    """Reviews whose pronoun (gender) is spuriously tied to the label: small groups to fill."""
    rng = np.random.default_rng(1)
    pos, neg = ["a good film", "a great story"], ["a bad film", "a terrible story"]
    rows = []
    for label, gender, n in (
        ("pos", "male", 24),
        ("pos", "female", 5),
        ("neg", "female", 24),
        ("neg", "male", 5),
    ):
        he = ("He", "his") if gender == "male" else ("She", "her")
        for _ in range(n):
            w = (pos if label == "pos" else neg)[rng.integers(2)]
            rows.append(
                (f"{he[0]} said {he[1]} pick number {rng.integers(1000)} was {w}.", label, gender)
            )
    pl.DataFrame(rows, schema=["text", "label", "gender"], orient="row").write_csv(path)


def _files(*roots: Path) -> list[Path]:
    out = []
    for r in roots:
        out += [r] if r.is_file() else [p for p in r.rglob("*") if p.is_file()]
    return out


def _assert_no_key(paths: list[Path], texts: list[str], key: str = KEY) -> None:
    for p in paths:
        assert key.encode() not in p.read_bytes(), f"the key is in {p}"
        # a key stored with its bytes reversed or split would still be a leak; a cheap check on
        # its distinctive middle part catches most re-encodings (JSON escapes it unchanged)
        assert key[3:20].encode() not in p.read_bytes(), f"part of the key is in {p}"
    for t in texts:
        assert key not in t and key[3:20] not in t, "the key was printed"


def test_judge_and_llm_keys_never_stored_or_printed(tmp_path, server):
    env = {ENV: KEY}
    logs: list[str] = []

    def cli(*args):
        r = run_cli(*args, env=env)
        logs.extend([r.stdout, r.stderr])
        assert not r.traceback and r.code == 0, str(r)
        return r

    # 1. the contamination judge
    jdb = tmp_path / "judge.duckdb"
    _judge_store(jdb)
    cli(
        "-v",
        "audit",
        "--db",
        jdb,
        "--auditors",
        "contamination",
        "--reference",
        "bench",
        "--judge-url",
        server,
        "--judge-model",
        "fixed",
        "--judge-key-env",
        ENV,
    )
    assert f"Bearer {KEY}" in _Fake.seen, "the judge never sent the key: nothing was tested"
    info = json.loads(
        run_cli("sql", "SELECT info FROM issue_summary", "--db", jdb, "--format", "json").stdout
    )[0]["info"]
    assert json.loads(info)["tier3"]["calls"] > 0
    cli("report", "--db", jdb, "--out", tmp_path / "judge.html", "--json", tmp_path / "judge.json")
    cli("export", tmp_path / "judge_out", "--db", jdb)

    # 2. LLM text generation for an under-represented group
    _Fake.seen.clear()
    src = tmp_path / "train.csv"
    _review_csv(src)
    gdb = tmp_path / "gen.duckdb"
    cli("ingest", src, "--db", gdb)
    cli("embed", "--db", gdb, "--model", "hash:256")
    cli("audit", "--db", gdb, "--auditors", "class_imbalance,spurious_attribute")
    cli(
        "-v",
        "repair",
        "--db",
        gdb,
        "--rebalance-by",
        "gender",
        "--strategy",
        "generate",
        "--llm-url",
        server,
        "--llm-model",
        "fixed",
        "--llm-key-env",
        ENV,
    )
    assert f"Bearer {KEY}" in _Fake.seen, "the generator never sent the key: nothing was tested"
    cli("report", "--db", gdb, "--out", tmp_path / "gen.html", "--json", tmp_path / "gen.json")
    cli("export", tmp_path / "gen_out", "--db", gdb, "--format", "jsonl")
    n_gen = run_cli("sql", "SELECT count(*) FROM generated", "--db", gdb, "--format", "csv")
    assert int(n_gen.stdout.split()[-1]) > 0

    stores = list(tmp_path.glob("*.duckdb*"))
    _assert_no_key(
        stores
        + _files(tmp_path / "judge_out", tmp_path / "gen_out")
        + [tmp_path / f for f in ("judge.html", "judge.json", "gen.html", "gen.json")],
        logs,
    )
    # what the store does keep: the variable's name, so a rerun knows where to look
    cfg = run_cli("sql", "SELECT config FROM runs", "--db", jdb, "--format", "csv").stdout
    assert KEY not in cfg


def test_key_echoed_by_the_server_is_not_printed(tmp_path, server):
    src = tmp_path / "train.csv"
    _review_csv(src)
    db = tmp_path / "gen.duckdb"
    env = {ENV: KEY}
    assert run_cli("ingest", src, "--db", db).code == 0
    assert run_cli("embed", "--db", db, "--model", "hash:256").code == 0
    _Fake.echo = True
    r = run_cli(
        "repair",
        "--db",
        db,
        "--rebalance-by",
        "gender",
        "--strategy",
        "generate",
        "--llm-url",
        server,
        "--llm-model",
        "fixed",
        "--llm-key-env",
        ENV,
        env=env,
    )
    assert f"Bearer {KEY}" in _Fake.seen
    assert not r.traceback, str(r)
    assert r.code == 2 and "401" in r.stderr, str(r)
    _assert_no_key([db], [r.stdout, r.stderr])


@pytest.mark.parametrize("bad", [KEY + "\n", KEY + "\r\n", " " + KEY + " "])
def test_key_with_stray_whitespace_is_not_printed(tmp_path, server, bad):
    src = tmp_path / "train.csv"
    _review_csv(src)
    db = tmp_path / "gen.duckdb"
    assert run_cli("ingest", src, "--db", db).code == 0
    assert run_cli("embed", "--db", db, "--model", "hash:256").code == 0
    r = run_cli(
        "repair",
        "--db",
        db,
        "--rebalance-by",
        "gender",
        "--strategy",
        "generate",
        "--llm-url",
        server,
        "--llm-model",
        "fixed",
        "--llm-key-env",
        ENV,
        env={ENV: bad},
    )
    assert not r.traceback, str(r)
    _assert_no_key([db], [r.stdout, r.stderr])
    if r.code == 0:  # whitespace around a key is stripped: the clean key was sent
        assert f"Bearer {KEY}" in _Fake.seen
