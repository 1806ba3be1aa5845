"""Render bench/RESULTS.md from every results file in bench/results/*.json.

    .venv/bin/python bench/report.py           # rewrite bench/RESULTS.md
    .venv/bin/python bench/report.py --check   # exit 1 when RESULTS.md is not what it renders

Generic: any file written by `common.write_results` renders, whatever script made it. Per file,
in file-name order: its title (or name), the script and arguments that made it, when, the
machine and its load, the inputs, the notes, each table of `figures["tables"]` (the
`common.table` convention) and every other figure as a compact key/value list. The output
depends only on the JSON files (nothing about the render itself, no time stamp), so a test can
check that RESULTS.md is what this script renders now.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
TARGET = BENCH / "RESULTS.md"
MAX_VALUE_CHARS = 200  # a long nested figure is cut in the list (the JSON file has all of it)
MAX_OTHER = 40  # other figures listed per file; the rest are counted (the JSON file has them)
VERSION_KEYS = ("datacure", "numpy", "torch", "faiss-cpu", "faiss-gpu-cu12", "cleanlab", "duckdb")

HEADER = """# Benchmark results

Rendered by `python bench/report.py` from the files in `bench/results/`, one section per file;
do not edit by hand (a test checks that this file is what the script renders). Each section
says which script made its figures, with which arguments, on which machine and under what
load. Timings are only compared within one run (anchors measured in the same run): the
machines are shared, and wall time stretches with their load.
"""


def fmt(v) -> str:
    """One value as table or list text: integers as they are, floats to 4 significant digits
    (no exponent above 1), booleans yes/no, None as a dash."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:.0f}"
        if abs(v) >= 1e-4:
            return f"{v:.4g}"
        return f"{v:.2e}"
    if isinstance(v, (dict, list)):
        text = json.dumps(v, separators=(", ", ": "), default=str)
        if len(text) > MAX_VALUE_CHARS:
            text = text[: MAX_VALUE_CHARS - 3] + "..."
        return f"`{text}`"
    return str(v)


def cell(v) -> str:
    return fmt(v).replace("|", "\\|").replace("\n", " ")


def flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts as dotted keys, in the file's order; lists and scalars are leaves."""
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def render_table(t: dict) -> list[str]:
    cols = [str(c) for c in t.get("columns", [])]
    lines = [f"**{t.get('title', 'table')}**", ""]
    if cols:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for row in t.get("rows", []):
            lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    if t.get("note"):
        lines += ["", str(t["note"])]
    return lines + [""]


def anchor(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    keep = "".join(c for c in text.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def title_of(doc: dict, stem: str) -> str:
    return str(doc.get("title") or doc.get("name") or stem)


def render_doc(doc: dict, stem: str) -> list[str]:
    lines = [f"## {title_of(doc, stem)}", ""]
    argv = " ".join(str(a) for a in doc.get("argv") or [])
    script = doc.get("script", "?")
    lines.append(f"- file: `bench/results/{stem}.json`")
    lines.append(f"- made by: `python {script}{' ' + argv if argv else ''}`")
    when = doc.get("created")
    secs = doc.get("seconds")
    if when or secs is not None:
        took = f" (took {fmt(secs)} s)" if secs is not None else ""
        lines.append(f"- when: {when or '-'}{took}")
    m = doc.get("machine") or {}
    if m:
        parts = [
            m.get("cpu"),
            f"{m['cpus']} CPUs" if m.get("cpus") else None,
            f"{fmt(m['memory_gb'])} GB" if m.get("memory_gb") else None,
            f"load average {fmt(m['load_average_1m'])} (1 min, at the end)"
            if m.get("load_average_1m") is not None
            else None,
        ]
        lines.append("- machine: " + ", ".join(p for p in parts if p))
    v = doc.get("versions") or {}
    shown = [f"{k} {v[k]}" for k in VERSION_KEYS if k in v]
    if shown:
        lines.append("- versions: " + ", ".join(shown))
    inputs = doc.get("inputs") or {}
    if inputs:
        lines.append("- inputs: " + "; ".join(f"{k} {fmt(x)}" for k, x in flatten(inputs, "")))
    lines.append("")
    for note in doc.get("notes") or []:
        lines.append(f"> {note}")
        lines.append(">")
    if doc.get("notes"):
        lines[-1] = ""
    figures = dict(doc.get("figures") or {})
    tables = figures.pop("tables", None) or []
    for t in tables:
        lines += render_table(t)
    rest = flatten(figures)
    if rest:
        lines.append("<details><summary>other figures</summary>")
        lines.append("")
        lines += [f"- `{k}`: {fmt(x)}" for k, x in rest[:MAX_OTHER]]
        if len(rest) > MAX_OTHER:
            lines.append(f"- ... and {len(rest) - MAX_OTHER} more in `bench/results/{stem}.json`")
        lines.append("")
        lines.append("</details>")
        lines.append("")
    return lines


def render(results: Path = RESULTS) -> str:
    """RESULTS.md as text, from every `*.json` in `results` (sorted by file name)."""
    files = sorted(results.glob("*.json"), key=lambda p: p.name)
    docs = []
    for f in files:
        try:
            docs.append((f.stem, json.loads(f.read_text())))
        except json.JSONDecodeError as exc:
            raise SystemExit(
                f"{f}: not valid JSON ({exc}); rerun the script that wrote it"
            ) from exc
    lines = [HEADER]
    if not docs:
        lines += ["No results yet: run `make bench`.", ""]
    else:
        lines.append("Contents:")
        lines.append("")
        for stem, doc in docs:
            t = title_of(doc, stem)
            lines.append(f"- [{t}](#{anchor(t)}) (`{doc.get('script', '?')}`)")
        lines.append("")
    for stem, doc in docs:
        lines += render_doc(doc, stem)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare, do not write")
    args = ap.parse_args()
    text = render()
    if args.check:
        same = TARGET.exists() and TARGET.read_text() == text
        print("bench/RESULTS.md is up to date" if same else "bench/RESULTS.md is stale")
        sys.exit(0 if same else 1)
    TARGET.write_text(text)
    print(
        f"wrote {TARGET.relative_to(BENCH.parent)} from {len(list(RESULTS.glob('*.json')))} files"
    )


if __name__ == "__main__":
    main()
