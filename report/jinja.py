"""The report's Jinja2 environment (autoescape: every value is escaped unless it is Markup, as
the SVG plots and nested sections are) and `macro(template, name)`, a macro of one of its
templates as a function returning Markup."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .summary import TABLE_ROWS, THUMB_PX
from .svg import _fmt

HERE = Path(__file__).resolve().parent  # the real folder (an editable install links files)


def _columns(rows: list[dict]) -> list:
    """The columns of a table of records: every key in first-seen order, `_`-keys left out."""
    return list(dict.fromkeys(k for r in rows for k in r if not str(k).startswith("_")))


def slug(name: Any) -> str:
    return "".join(c if c.isalnum() else "-" for c in str(name).lower()).strip("-") or "x"


@functools.cache
def env():
    import jinja2

    e = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=lambda v: "" if v is None else v,  # None prints as nothing, as `_e` did
    )
    e.filters.update(
        fmt=_fmt,
        num=lambda v: f"{v:,}",
        pct1=lambda v: f"{v:.1%}",
        pct2=lambda v: f"{v:.2%}",
        slug=slug,
    )
    e.tests["numeric"] = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    e.globals.update(columns_of=_columns, TABLE_ROWS=TABLE_ROWS, THUMB_PX=THUMB_PX)
    return e


def macro(template: str, name: str):
    """The macro `name` of `template` (report/templates), called like a function."""
    return getattr(env().get_template(template).module, name)


def markup(html: str):
    """`html` marked safe: rendered from these templates (or the SVG helpers, which escape)."""
    from markupsafe import Markup

    return Markup(html)
