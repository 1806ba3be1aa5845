"""Moved to `datacure.repair.plan` (issue 16). This alias keeps imports written against the old
place working on branches merged after the move (bench/repair_wga.py); remove it once none is
left."""

from ..repair.plan import RepairReport, list_edits, plan_repairs, review_edits  # noqa: F401
