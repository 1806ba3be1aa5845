"""The layout stays readable: a ratchet on module and function length, and the layering.

Issue 16's guide is a module near 500 lines and a function near 60. These limits are the
largest sizes the product code has today plus a little room, so a change that grows a long
function or module past them has to split it (or raise the limit here, in review, saying why).
The layering is the one docs/ARCHITECTURE.md draws: store/ depends on nothing of datacure's
above it, auditors on the store, the repair side and the front doors on everything below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("auditor", "demo", "engine", "generators", "repair", "report", "serve", "store")
MAX_MODULE_LINES = 560
MAX_FUNCTION_LINES = 80


def product_modules() -> list[Path]:
    files = sorted(ROOT.glob("*.py"))  # cli.py, cli_support.py, api.py, chat.py, ...
    for pkg in PACKAGES:
        files += sorted((ROOT / pkg).rglob("*.py"))
    return [f for f in files if f.is_file()]


def test_modules_and_functions_stay_readable():
    long_modules, long_functions = [], []
    for path in product_modules():
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}:{node.lineno} {node.name}: {size} lines")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: split them: {long_modules}"
    assert not long_functions, (
        f"functions over {MAX_FUNCTION_LINES} lines: split them into named steps: {long_functions}"
    )


# what each package may import from datacure (relative imports); anything else is upward
ALLOWED = {
    "store": set(),
    "auditor": {"store", "chat", "textnorm"},
    "engine": {"store", "auditor"},
    "generators": {"store", "chat"},
    "repair": {"store", "auditor", "generators"},
    "report": {"store", "auditor"},
}


def relative_targets(path: Path, pkg: str) -> set[str]:
    """The datacure top-level names a module imports relatively (`from ..x import`)."""
    depth = len(path.relative_to(ROOT / pkg).parts)  # 1 for pkg/mod.py, 2 for pkg/sub/mod.py
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {  # imports under `if TYPE_CHECKING:` name a type, they load nothing
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for n in ast.walk(block)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == depth + 1:  # from datacure's root
            head = (node.module or "").split(".")[0]
            names = [head] if head else [a.name for a in node.names]
            out.update(n for n in names if n != pkg)
    return out


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_packages_import_only_downward(pkg):
    bad = {}
    for path in sorted((ROOT / pkg).rglob("*.py")):
        extra = relative_targets(path, pkg) - ALLOWED[pkg]
        if extra:
            bad[path.relative_to(ROOT).as_posix()] = sorted(extra)
    assert not bad, f"{pkg}/ imports from packages above it: {bad}"
