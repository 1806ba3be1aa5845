"""The app's HTML pages (server-rendered, see serve/templates) and the row thumbnails.

Each handler takes the app's shared state (`web`) and the request; `routes` binds them."""

from __future__ import annotations

import json
from functools import partial

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..report.jinja import markup  # the report's views (autoescaped templates)
from . import queries as Q
from .context import Web, page_params, row_params

THUMB_SIZES = {"s": 96, "m": 480}


def routes(web: Web) -> list[Route]:
    def page(fn):  # a page handler bound to this app, run with the store's error mapping
        return web.html(partial(fn, web))

    return [
        Route("/", page(overview)),
        Route("/issues", page(issues_page)),
        Route("/rows/{row_id:int}", page(row_page)),
        Route("/findings", page(findings_page)),
        Route("/sql", partial(sql_page, web)),
        Route("/map", partial(map_page, web)),
        Route("/edits", page(edits_page)),
        Route("/thumb/{row_id:int}", partial(thumb, web)),
    ]


def overview(web: Web, request: Request):
    with web.access.read() as st:
        summ = web.summary(st)
    return web.page("overview", request, title="overview", s=summ)


def issues_page(web: Web, request: Request):
    flt = Q.IssueFilter.from_query(request.query_params)
    limit, offset = page_params(request, 50)
    with web.access.read() as st:
        data = Q.list_issues(st, flt, limit=limit, offset=offset, count=web.count)
        auds, labels, splits = web.facets(st, data["run_id"])
    return web.page(
        "issues",
        request,
        title="flagged rows",
        data=data,
        flt=flt,
        query=flt.as_query(),
        auditors=auds,
        labels=labels,
        splits=splits,
    )


def row_page(web: Web, request: Request):
    rid, run = row_params(request)
    with web.access.read() as st:
        d = Q.row_detail(st, rid, run)
        labels = web.facets(st, d["run_id"])[1]
        views = _finding_views(st, d)
    return web.page("row", request, title=f"row {rid}", d=d, labels=labels, views=views)


def findings_page(web: Web, request: Request):
    with web.access.read() as st:
        run_id = Q.latest_run(st)
        f = Q.findings(st, run_id)
    from ..report.views import auditor_view

    for a in f["auditors"]:
        view = auditor_view(a["name"])
        a["view"] = markup(view(a["info"])) if view else ""
        a["info_text"] = json.dumps(a["info"], indent=1, default=str)[:6000]
    return web.page("findings", request, title="findings", f=f)


async def sql_page(web: Web, request: Request):
    return web.page("sql", request, title="SQL console", query=request.query_params.get("q", ""))


async def map_page(web: Web, request: Request):
    return web.page("map", request, title="embedding map")


def edits_page(web: Web, request: Request):
    status = request.query_params.get("status") or None
    limit, offset = page_params(request, 100)
    with web.access.read() as st:
        data = Q.list_edits(st, status, limit=limit, offset=offset)
    return web.page("edits", request, title="planned edits", data=data, status=status or "")


async def thumb(web: Web, request: Request):
    def work():
        rid = int(request.path_params["row_id"])
        size = THUMB_SIZES.get(request.query_params.get("size", "s"), THUMB_SIZES["s"])
        with web.access.read() as st:
            path = Q.image_path(st, rid)  # the only file the app opens: a row's own image
        data = web.thumbs.get(path, size) if path else None
        if data is None:
            return Response(status_code=404)
        return Response(
            data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )

    return await web.guarded(request, work)


def _finding_views(st, d: dict) -> dict:
    """For a row's flags whose auditor has a findings view in the report (drift tables, the
    spurious group heatmap, cue tables), that view of the auditor's info."""
    from ..report.summary import _loads
    from ..report.views import auditor_view
    from ..store import schema as S

    out = {}
    run_id = d.get("run_id")
    if run_id is None:
        return out
    for f in d["flags"]:
        view = auditor_view(f["auditor"])
        if view is None or not f["is_issue"]:
            continue
        info = st.scalar(
            f"SELECT info FROM {S.ISSUE_SUMMARY} WHERE run_id = ? AND auditor = ?",
            [run_id, f["auditor"]],
        )
        info = _loads(info) or {}
        if isinstance(info, dict):
            out[f["auditor"]] = markup(view(info))
    return out
