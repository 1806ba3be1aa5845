"""One loader for the YAML/JSON files users hand to datacure (audit config, repair policy,
word lists): a missing file or bad syntax is an InputError naming the file and the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import InputError


def load_config(path: str | os.PathLike, what: str = "config") -> Any:
    """Parse `path` as YAML (`.yaml`, `.yml`) or JSON (anything else). `what` names the file's
    role in messages ("audit config", "repair config", "word list")."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {p} does not exist", "check the path")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except (ValueError, ImportError) as exc:  # json.JSONDecodeError is a ValueError
        raise InputError(f"cannot parse {what} {p}: {exc}", "fix the YAML/JSON syntax") from None
    except Exception as exc:  # yaml.YAMLError and its subclasses (yaml is imported lazily)
        if type(exc).__module__.startswith("yaml"):
            raise InputError(f"cannot parse {what} {p}: {exc}", "fix the YAML syntax") from None
        raise
