"""Presentation: what the report shows as data (`summary`: SQL over the store, bounded in size),
small SVG plots (`svg`), HTML fragments from auditors' info (`views`), and the standalone page
(`html`: a Jinja2 template with autoescape, CSS and scripts from `static/`). serve/ reuses the
summary queries and views."""

from .html import render_html, write_report
from .summary import build_summary

__all__ = ["build_summary", "render_html", "write_report"]
