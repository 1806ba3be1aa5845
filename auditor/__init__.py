"""Auditors: each check is one class in this package, registered by name.

`load_builtin()` imports the built-in auditor modules so their `@register` decorators run.
"""

from __future__ import annotations

import importlib

from auditor.base import REGISTRY, AuditResult, Auditor, Requires, get_auditor, register

# Modules holding built-in auditors. A module listed here that does not exist yet is skipped,
# so work in progress does not break the registry.
BUILTIN_MODULES = (
    "auditor.label",
    "auditor.outlier",
    "auditor.duplicates",
    "auditor.non_iid",
    "auditor.imbalance",
    "auditor.null",
    "auditor.drift",
    "auditor.leakage",
    "auditor.contamination",
    "auditor.spurious",
    "auditor.slice",
)

_loaded = False


def load_builtin() -> dict:
    global _loaded
    if not _loaded:
        for mod in BUILTIN_MODULES:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as exc:
                if exc.name != mod:
                    raise
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
