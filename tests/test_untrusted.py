"""Files from strangers: decompression bombs at Pillow's real limits, image paths that leave the
source folder (../, absolute, ~, symlinked files and folders), and no unpickling anywhere.

Planted faults: a 100000x100000 PNG whose header alone is the bomb (Pillow raises), an
11000x11000 PNG (over datacure's limit but under Pillow's 2x error: only datacure's own check
catches it), bombs inside an image folder, escaping paths in a table and an image folder, a
pickle and an object array passed as `--pred-probs` (the payload would create a marker file),
and a source file with each forbidden loading call (the scanner must find it).
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hardening_util import ROOT, run_cli, snapshot
from helpers import blobs, make_store

from datacure.generators.synthetic import coloured_digits, write_image_table


def _png_header_bomb(path: Path, w: int = 100_000, h: int = 100_000) -> None:
    """A valid-looking PNG that declares w x h pixels in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # 1-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _real_bomb(path: Path, side: int = 11_000) -> None:
    """A real, decodable 1-bit PNG of side^2 pixels (121M > 100M limit, < Pillow's 2x error)."""
    from PIL import Image

    Image.new("1", (side, side)).save(path, optimize=False)


@pytest.fixture
def image_db(tmp_path):
    """A store that already holds an image train split (so a failed ingest has something to
    leave alone), its snapshot, and a folder with 3 good images and a table of them."""
    imgs, df = coloured_digits(n=6, seed=2)
    first = write_image_table(imgs[:3], df.head(3), tmp_path / "first", name="train.csv")
    db = tmp_path / "img.duckdb"
    r = run_cli("ingest", first, "--db", db)
    assert r.code == 0, str(r)
    csv = write_image_table(imgs[3:], df.tail(3), tmp_path / "ds", name="test.csv")
    return db, snapshot(db), csv


def _refused(r, before, db, *words):
    assert not r.traceback, str(r)
    assert r.code == 2, str(r)
    err = " ".join(r.stderr.split())
    for w in words:
        assert w in err, f"{w!r} not in: {err}"
    assert snapshot(db) == before, "a refused ingest changed the store"
    return err


def test_decompression_bombs_refused_at_default_limit(image_db):
    from PIL import Image

    import datacure.store.ingest_checks as ingest_mod

    db, before, csv = image_db
    root = csv.parent
    _png_header_bomb(root / "images" / "header_bomb.png")
    _real_bomb(root / "images" / "real_bomb.png")
    df = pl.read_csv(csv)
    df = pl.concat(
        [
            df,
            df.head(2).with_columns(
                pl.Series("image", ["images/header_bomb.png", "images/real_bomb.png"])
            ),
        ]
    )
    df.write_csv(csv)
    assert ingest_mod.MAX_IMAGE_PIXELS == 100_000_000  # the documented default
    r = run_cli("ingest", csv, "--db", db)
    err = _refused(r, before, db, "2 too large", "decompression bombs", "DATACURE_MAX_IMAGE_PIXELS")
    assert "header_bomb.png" in err and "real_bomb.png" in err, err
    # Pillow's own limit is in force process-wide, not disabled (None) by anything datacure did
    assert Image.MAX_IMAGE_PIXELS == ingest_mod.MAX_IMAGE_PIXELS


def test_bomb_inside_an_image_folder_is_refused(tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / cls / "ok.png")
    _png_header_bomb(root / "dog" / "bomb.png")
    db = tmp_path / "f.duckdb"
    r = run_cli("ingest", root, "--db", db)
    assert not r.traceback and r.code == 2, str(r)
    assert "1 too large: dog/bomb.png" in " ".join(r.stderr.split())
    assert not db.exists()  # a failed first ingest leaves no store behind


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "home", "symlink_file", "nested_dotdot"])
def test_paths_escaping_the_source_folder(image_db, tmp_path, kind):
    db, before, csv = image_db
    outside = tmp_path / "outside.png"
    (csv.parent / "images" / "000000.png").rename(outside)
    rel = {
        "dotdot": "../outside.png",
        "absolute": str(outside),
        "home": "~/outside.png",
        "symlink_file": "images/link.png",
        "nested_dotdot": "images/../../outside.png",
    }[kind]
    if kind == "symlink_file":
        (csv.parent / "images" / "link.png").symlink_to(outside)
    df = pl.read_csv(csv).with_columns(
        pl.Series("image", [rel, "images/000001.png", "images/000002.png"])
    )
    df.write_csv(csv)
    r = run_cli("ingest", csv, "--db", db)
    _refused(r, before, db, "1 outside", "--allow-outside-paths")
    if kind == "home":
        return  # ~ is the user's home: refusing it is the point; no file planted there
    r = run_cli("ingest", csv, "--db", db, "--allow-outside-paths")
    assert r.code == 0, str(r)
    r = run_cli(
        "sql",
        "SELECT image_path FROM samples WHERE split = 'test' ORDER BY row_id",
        "--db",
        db,
        "--format",
        "csv",
    )
    assert r.stdout.split()[1] == str(outside.resolve())  # resolved: the link is followed


def test_image_folder_symlinks_out_are_refused_or_not_followed(tmp_path):
    from PIL import Image

    secret = tmp_path / "secret"
    secret.mkdir()
    Image.new("RGB", (8, 8)).save(secret / "private.png")
    root = tmp_path / "folder"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / cls / "ok.png")
    (root / "dog" / "link.png").symlink_to(secret / "private.png")  # a file link out
    db = tmp_path / "f.duckdb"
    r = run_cli("ingest", root, "--db", db)
    assert not r.traceback and r.code == 2, str(r)
    assert "1 outside: dog/link.png" in " ".join(r.stderr.split())
    (root / "dog" / "link.png").unlink()
    (root / "bird").symlink_to(secret, target_is_directory=True)  # a folder link out
    r = run_cli("ingest", root, "--db", db)
    assert r.code == 0, str(r)
    r = run_cli(
        "sql",
        "SELECT count(*) FILTER (WHERE NOT starts_with(image_path, "
        f"'{root.resolve()}/')) AS n_out, count(*) AS n FROM samples",
        "--db",
        db,
        "--format",
        "csv",
    )
    assert r.stdout.split()[1] == "0,2", str(r)  # the linked folder was not walked


# --- never unpickle -----------------------------------------------------------------------------
_PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def unpickling_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every call in `source` that can unpickle: pickle/dill/joblib/... loads, pandas
    read_pickle, torch.load without weights_only=True, np.load with allow_pickle=True, and
    from_pretrained with use_safetensors=False or trust_remote_code=True (runs model code)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, last = name.rpartition(".")
        where = f"{filename}:{node.lineno} {name}"
        if (
            head.split(".")[-1] in _PICKLERS
            and last in ("load", "loads", "Unpickler", "open")
            or last in ("Unpickler", "read_pickle")
        ):
            found.append(where)
        elif (
            head.split(".")[-1] == "torch"
            and last == "load"
            and _kw(node, "weights_only") is not True
        ):
            found.append(where + " without weights_only=True")
        elif (
            head.split(".")[-1] in ("np", "numpy")
            and last == "load"
            and _kw(node, "allow_pickle") not in (None, False)
        ):
            found.append(where + " with allow_pickle")
        elif last == "from_pretrained" and (
            _kw(node, "use_safetensors") is False
            or _kw(node, "trust_remote_code") not in (None, False)
        ):
            found.append(where + " (use_safetensors=False / trust_remote_code)")
    return found


def _project_sources() -> list[Path]:
    files = sorted(ROOT.glob("*.py"))  # cli.py, cli_support.py, api.py, chat.py, ...
    packages = ("store", "auditor", "generators", "repair", "report", "serve", "engine", "demo")
    for pkg in (*packages, "bench"):
        files += sorted(p for p in (ROOT / pkg).rglob("*.py") if "out" not in p.parts)
    return [f for f in files if f.exists()]


def test_no_source_file_unpickles():
    files = _project_sources()
    assert len(files) > 20
    bad = [hit for f in files for hit in unpickling_calls(f.read_text(), str(f.relative_to(ROOT)))]
    assert not bad, "unpickling calls: " + "; ".join(bad)


def test_the_unpickling_scanner_finds_planted_calls():
    planted = """
import pickle, torch, joblib, numpy as np, pandas as pd
a = pickle.load(f); b = pickle.loads(s); c = joblib.load(p); d = pd.read_pickle(p)
e = torch.load(p); f2 = torch.load(p, weights_only=False); g = np.load(p, allow_pickle=True)
h = M.from_pretrained(p, use_safetensors=False); i = M.from_pretrained(p, trust_remote_code=True)
ok1 = torch.load(p, weights_only=True); ok2 = np.load(p); ok3 = np.load(p, allow_pickle=False)
ok4 = M.from_pretrained(p, local_files_only=True); ok5 = json.load(f); ok6 = pickle.dumps(x)
"""
    hits = unpickling_calls(planted)
    assert len(hits) == 9, hits
    assert not any(k in " ".join(hits) for k in ("ok", "json.load", "dumps"))


class _Payload:
    """Unpickling this creates MARKER: proof that something unpickled a file."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_pred_probs_are_refused_never_loaded(tmp_path):
    marker = tmp_path / "PWNED"
    _Payload.marker = str(marker)
    x, y = blobs(40, 8, 2)
    db = tmp_path / "p.duckdb"
    make_store(db, pl.DataFrame({"label": y.astype(str)}), vectors=x).close()
    evil = tmp_path / "evil.npy"
    evil.write_bytes(pickle.dumps(_Payload()))
    objarr = tmp_path / "objarr.npy"
    np.save(objarr, np.array([_Payload()] * 3, dtype=object), allow_pickle=True)
    for path in (evil, objarr):
        before = snapshot(db)
        r = run_cli("audit", "--db", db, "--auditors", "label", "--pred-probs", path)
        assert not r.traceback, str(r)
        assert not marker.exists(), f"{path.name} was unpickled"
        # refused with the reason: either the whole command (exit 2, store unchanged) or the
        # auditor is skipped saying why
        text = " ".join((r.stdout + r.stderr).split())
        assert "cannot read pred_probs file" in text, str(r)
        if r.code == 2:
            assert snapshot(db) == before


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_torch_load_default_refuses_pickled_code(tmp_path):
    """Libraries datacure loads models through (transformers, diffusers, sentence-transformers)
    call torch.load; with torch>=2.6 its default is weights_only=True, so a model file holding
    pickled code is refused rather than run. Pinned torch must keep that default."""
    import torch

    marker = tmp_path / "PWNED"
    _Payload.marker = str(marker)
    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bad)
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") in (None, "", "0")


# --- export never deletes outside OUT -------------------------------------------------------------
def test_export_never_deletes_outside_its_folder(tmp_path):
    """A split named `..` once made `export --format hf` rmtree OUT/.. (the working folder, store
    included); a manifest.json planted in OUT could name files outside it to clear."""
    work = tmp_path / "work"
    (work / "keep").mkdir(parents=True)
    (work / "keep" / "precious.txt").write_text("precious")
    src = work / "d.csv"
    src.write_text("text,label\nhello there you,a\nanother one here,b\n")
    db = work / "s.duckdb"
    assert run_cli("ingest", src, "--db", db, "--split", "..").code == 0
    out = work / "out"
    out.mkdir()
    r = run_cli("export", out, "--db", db, "--format", "hf")
    assert not r.traceback and r.code == 2 and "Hugging Face split names" in r.stderr, str(r)
    assert (work / "keep" / "precious.txt").exists() and db.exists()
    r = run_cli("export", out, "--db", db, "--format", "parquet")
    assert r.code == 0, str(r)
    assert sorted(p.name for p in out.iterdir()) == ["_.parquet", "manifest.json"]
    # a manifest edited to list paths outside OUT: the next export clears only its own files
    man = json.loads((out / "manifest.json").read_text())
    man["files"] = {"a": "../keep", "b": str(work / "keep" / "precious.txt"), "c": ".."}
    (out / "manifest.json").write_text(json.dumps(man))
    r = run_cli("export", out, "--db", db, "--format", "csv")
    assert r.code == 0, str(r)
    assert (work / "keep" / "precious.txt").read_text() == "precious" and db.exists()
