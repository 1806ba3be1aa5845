"""Moved to `datacure.report` (issue 16). This alias keeps imports written against the old place
working on branches merged after the move (bench/report_scale.py); remove it once none is left.
It imports upward (auditor -> report) only when imported itself."""

from ..report import build_summary, render_html, write_report  # noqa: F401
