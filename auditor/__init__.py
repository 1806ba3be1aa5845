"""Auditors: each check is one class in this package, registered by name.

`load_builtin()` imports the built-in auditor modules so their `@register` decorators run.
"""

from __future__ import annotations

import importlib

from .base import REGISTRY, Auditor, AuditResult, Requires, get_auditor, register

# Modules holding built-in auditors, relative to this package. Each must import: a missing or
# broken module is an error, never a silently smaller registry.
BUILTIN_MODULES = (
    "label",
    "outlier",
    "duplicates",
    "non_iid",
    "imbalance",
    "null",
    "drift",
    "leakage",
    "contamination",
    "spurious",
    "slice",
)

_loaded = False


def load_builtin() -> dict:
    global _loaded
    if not _loaded:
        for mod in BUILTIN_MODULES:
            importlib.import_module(f"{__package__}.{mod}")
        _loaded = True
    return REGISTRY


__all__ = [
    "REGISTRY",
    "AuditResult",
    "Auditor",
    "Requires",
    "get_auditor",
    "load_builtin",
    "register",
]
