"""Moved to `datacure.repair.export` (issue 16). This alias keeps imports written against the
old place working on branches merged after the move (bench/repair_wga.py); remove it once none is
left."""

from ..repair.export import ExportReport, export  # noqa: F401
