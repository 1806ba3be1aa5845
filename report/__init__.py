"""Presentation: what the report shows as data (`summary`: SQL over the store, bounded in size),
small SVG plots (`svg`), the values of the views of auditors' info (`views`), and the standalone
page and its sections (`html`); all markup is in Jinja2 templates with autoescape (`templates/`,
one environment in `jinja`), CSS and scripts in `static/`. serve/ reuses the summary queries and
views."""

from .html import render_html, write_report
from .summary import build_summary

__all__ = ["build_summary", "render_html", "write_report"]
