"""datacure as an installed library: one `datacure` namespace in the wheel, the version, the
Python API round trip (pandas, polars, pyarrow, Hugging Face in; polars out), the quickstart
notebook, and write commands that never create a store by accident."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hardening_util import run_cli
from helpers import blobs
from typer.testing import CliRunner

import datacure as dc
from datacure import cli

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_no_module_outside_the_namespace_is_imported():
    """Tests import the package as installed: a top-level `store` or `auditor` would be a second
    copy of ours (or someone else's distribution of that name)."""
    leaked = sorted(
        m
        for m in sys.modules
        if m.split(".")[0] in ("auditor", "generators", "store", "cli", "api")
    )
    assert leaked == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel built from a copy of the checkout (the checkout itself is left alone)."""
    src = tmp_path_factory.mktemp("src") / "datacure"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", "*.duckdb*", "datacure-demo"
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (whl,) = out.glob("datacure-*.whl")
    return zipfile.ZipFile(whl)


def test_wheel_installs_one_namespace(wheel):
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"datacure"}, sorted(tops)
    for must in (
        "datacure/__init__.py",
        "datacure/__main__.py",
        "datacure/cli.py",
        "datacure/api.py",
        "datacure/auditor/label.py",
        "datacure/store/db.py",
        "datacure/repair/plan.py",
        "datacure/demo/data/news.csv",
        "datacure/demo/data/truth.json",
        "datacure/report/templates/report.html",
        "datacure/report/static/report.css",
        "datacure/serve/app.py",
        "datacure/serve/templates/base.html",
        "datacure/serve/templates/issues.html",
        "datacure/serve/static/app.js",
        "datacure/serve/static/app.css",
    ):
        assert must in names, must
    assert not [n for n in names if "/tests/" in n or "/bench/" in n or n.endswith(".ipynb")]
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = wheel.read(meta).decode()
    requires = [
        ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Requires-Dist:")
    ]
    runtime = [r for r in requires if "extra ==" not in r]
    assert not [r for r in runtime if r.startswith(("pytest", "hypothesis", "ruff"))], runtime
    assert not [r for r in runtime if "datalab" in r or "faiss-gpu" in r], runtime
    assert not [r for r in runtime if r.startswith("torch") and "==" in r], runtime
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "datacure = datacure.cli:main" in wheel.read(entry).decode()


def test_version_on_the_command_line():
    res = CliRunner().invoke(cli.app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"datacure {dc.__version__}"
    assert dc.__version__[0].isdigit()
    mod = subprocess.run(
        [sys.executable, "-m", "datacure", "--version"], capture_output=True, text=True, timeout=120
    )
    assert mod.returncode == 0 and mod.stdout.strip() == f"datacure {dc.__version__}", mod.stderr


def test_import_datacure_is_light():
    heavy = ("torch", "faiss", "transformers", "sentence_transformers", "diffusers", "sklearn")
    code = (
        "import sys, datacure; ds = datacure.open('x.duckdb'); "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "", f"`import datacure` pulled in: {res.stdout.strip()}"


# --- the API round trip -------------------------------------------------------------------------
def _frame(n: int = 240, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    x, y = blobs(n=n, d=8, centers=3, seed=seed)
    df = pl.DataFrame(
        {
            "text": [f"item {i} of class {c}" for i, c in enumerate(y)],
            "label": [f"c{c}" for c in y],
            "vec": x.tolist(),
        }
    )
    return df, x


@pytest.mark.parametrize("kind", ["polars", "pandas", "arrow", "hf"])
def test_api_ingests_every_frame_kind(tmp_path, kind):
    df, _ = _frame(60)
    df = df.drop("vec")
    data = {
        "polars": lambda: df,
        "pandas": lambda: df.to_pandas(),
        "arrow": lambda: df.to_arrow(),
        "hf": lambda: pytest.importorskip("datasets").Dataset.from_pandas(df.to_pandas()),
    }[kind]()
    ds = dc.open(tmp_path / "s.duckdb")
    assert not ds.exists
    rep = ds.ingest(data, split="train", label="label", text="text")
    assert rep.split_counts == {"train": 60}
    got = ds.sql("SELECT label, text FROM samples ORDER BY row_id")
    assert isinstance(got, pl.DataFrame)
    assert got["label"].to_list() == df["label"].to_list()
    assert got["text"].to_list() == df["text"].to_list()


def test_api_ingests_a_datasetdict_as_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    df, _ = _frame(40)
    pdf = df.drop("vec").to_pandas()
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_pandas(pdf.iloc[:30].reset_index(drop=True)),
            "test": datasets.Dataset.from_pandas(pdf.iloc[30:].reset_index(drop=True)),
        }
    )
    ds = dc.open(tmp_path / "s.duckdb")
    rep = ds.ingest(dd, label="label", text="text")
    assert rep.split_counts == {"train": 30, "test": 10}


def test_api_round_trip(tmp_path):
    """ingest -> audit (with the user's own pred_probs) -> summary, issues, sql -> repair ->
    export -> report, all through `datacure.open`, with DataFrames out."""
    df, x = _frame()
    y = np.array([int(v[1:]) for v in df["label"]])
    flipped = np.arange(0, len(y), 24)  # plant label errors
    labels = y.copy()
    labels[flipped] = (labels[flipped] + 1) % 3
    df = df.with_columns(pl.Series("label", [f"c{c}" for c in labels]))
    ds = dc.open(tmp_path / "api.duckdb")
    ds.ingest(df, split="train", label="label", text="text", vector="vec")
    probs = np.full((len(y), 3), 0.02)
    probs[np.arange(len(y)), y] = 0.96  # a confident model that knows the true class
    run = ds.audit(auditors=["label", "exact_duplicate"], pred_probs=probs)
    assert isinstance(run, dc.AuditRun)
    summary = run.summary()
    assert isinstance(summary, pl.DataFrame)
    assert set(summary["auditor"]) == {"label", "exact_duplicate"}
    top = run.issues("label", top=len(flipped))
    flipped_ids = set(
        ds.sql("SELECT row_id FROM samples ORDER BY row_id")["row_id"].to_numpy()[flipped].tolist()
    )
    # every flag is a flip and most flips are flagged (the expected-F1 cut may stop before the
    # least certain ones); the flips are the worst-scored rows
    assert set(top["row_id"].to_list()) <= flipped_ids and top.height >= len(flipped) // 2
    worst = ds.sql(
        "SELECT row_id FROM issues WHERE auditor = 'label' AND run_id = "
        f"{run.run_id} ORDER BY score LIMIT {len(flipped)}"
    )
    assert set(worst["row_id"].to_list()) == flipped_ids
    assert {"row_id", "score", "suggested_label", "text", "label", "split"} <= set(top.columns)
    assert top["score"].is_sorted()
    assert (top["suggested_label"] != top["label"]).all()
    assert ds.issues("label", top=3).height == 3  # the latest run
    assert ds.run().run_id == run.run_id
    assert run.info("label")["pred_probs"] == "user array"
    assert run.breached({"label": 0.01}) and not run.breached({"label": 0.5})
    text = repr(run)
    assert "label" in text and "flagged" in text
    assert "<table>" in run._repr_html_() and "label" in run._repr_html_()
    plan = ds.repair()
    assert isinstance(plan, dc.RepairPlan) and "relabel" in repr(plan) + plan.summary()
    assert isinstance(ds.edits(), pl.DataFrame)
    out = ds.export(tmp_path / "out", format="parquet")
    exported = pl.read_parquet(out.out_dir / out.files["train"])
    assert exported.height == len(y)
    assert ds.report(tmp_path / "r.html").exists()
    assert "train 240" in repr(ds) and "api.duckdb" in ds._repr_html_()
    assert summary.to_pandas().shape[0] == 2  # DataFrames convert for pandas users


def test_api_bad_input_raises_input_error(tmp_path):
    ds = dc.open(tmp_path / "s.duckdb")
    with pytest.raises(dc.InputError, match="cannot ingest an object of type builtins.list"):
        ds.ingest([1, 2, 3])
    assert not (tmp_path / "s.duckdb").exists()  # a failed first ingest leaves no file
    with pytest.raises(dc.InputError, match="no store at"):
        ds.audit()
    with pytest.raises(dc.InputError, match="no store at"):
        ds.sql("SELECT 1")
    assert not (tmp_path / "s.duckdb").exists()
    ds.ingest(pl.DataFrame({"text": ["a b", "c d"], "label": ["x", "y"]}), text="text")
    with pytest.raises(dc.InputError, match="pred_probs has shape"):
        ds.audit(auditors=["label"], pred_probs=np.ones((5, 2)) / 2)
    run = ds.audit(auditors=["exact_duplicate", "label"])  # label: skipped, no embeddings
    with pytest.raises(dc.InputError, match="did you mean 'label'"):
        run.breached({"lable": 0.1})
    with pytest.raises(dc.InputError, match="was skipped"):
        run.breached({"label": 0.05})
    with pytest.raises(dc.InputError, match="did not run"):
        run.breached({"outlier": 0.05})


def test_pandas_frame_through_ingest_frame(tmp_path):
    """`ingest_frame` took polars/arrow only: a pandas frame raised AttributeError."""
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    pdf = pl.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}).to_pandas()
    with Store(tmp_path / "s.duckdb") as st:
        rep = ingest_frame(st, pdf, text="text")
    assert rep.split_counts == {"train": 2}


# --- write commands never create a store ------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["embed"],
        ["audit"],
        ["repair"],
        ["review"],
        ["edits", "--accept", "all"],
        ["issues"],
        ["report", "--out", "r.html"],
        ["export", "out"],
        ["info"],
        ["sql", "SELECT 1"],
        ["serve", "--port", "0"],
    ],
    ids=lambda a: a[0] + ("-accept" if "--accept" in a else ""),
)
def test_commands_on_a_missing_store_exit_2_and_create_nothing(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "typo.duckdb"
    res = run_cli(*args, "--db", str(db))
    assert res.code == 2, res
    assert "no store at" in res.stderr and "datacure ingest" in res.stderr, res
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


# --- the quickstart notebook --------------------------------------------------------------------
def test_quickstart_notebook_runs_top_to_bottom(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client import KernelManager

    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    # the kernel's channels on unix sockets: with TCP, jupyter_client picks free ports by
    # binding and closing them, and another process on the machine may take one before the
    # kernel binds it ("Address already in use"); a short folder, for the socket path limit
    sockets = Path(tempfile.mkdtemp(prefix="dc-nb-"))
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(sockets / "k"))
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert errors == []
    (cell,) = [c for c in nb.cells if c.source.strip().endswith("run.summary()")]
    summary = cell.outputs[0]["data"]
    assert "label" in summary["text/plain"] and "text/html" in summary
    (cell,) = [c for c in nb.cells if "ds.definition()" in c.source]
    shown = "".join(o.get("text", "") + str(o.get("data", "")) for o in cell.outputs)
    assert "text: text | label: label" in shown and "categorical" in shown
