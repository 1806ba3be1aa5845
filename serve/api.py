"""The JSON API under /api/ (reads, and the read-only SQL console's POST /api/sql); the review
writes are in serve/reviews.py.

Each handler takes the app's shared state (`web`) and the request; `routes` binds them."""

from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..store.errors import InputError
from . import console
from . import queries as Q
from .context import Web, page_params, row_params


def routes(web: Web) -> list[Route]:
    def api(fn, body: bool = False):  # a JSON handler bound to this app
        return web.api(partial(fn, web), body=body)

    return [
        Route("/api/health", api(health)),
        Route("/api/summary", api(summary)),
        Route("/api/issues", api(issues)),
        Route("/api/rows/{row_id:int}", api(row)),
        Route("/api/findings", api(findings)),
        Route("/api/map", api(embedding_map)),
        Route("/api/edits", api(edits)),
        Route("/api/sql", api(sql, body=True), methods=["POST"]),
    ]


def health(web: Web, request: Request):
    with web.access.read() as st:
        return {"ok": True, "run_id": Q.latest_run(st)}


def summary(web: Web, request: Request):
    with web.access.read() as st:
        return web.summary(st)


def issues(web: Web, request: Request):
    flt = Q.IssueFilter.from_query(request.query_params)
    limit, offset = page_params(request, 50)
    count = request.query_params.get("count", "1") not in ("0", "false")
    with web.access.read() as st:
        total = web.count if count else False
        return Q.list_issues(st, flt, limit=limit, offset=offset, count=total)


def row(web: Web, request: Request):
    rid, run = row_params(request)
    with web.access.read() as st:
        return Q.row_detail(st, rid, run)


def findings(web: Web, request: Request):
    with web.access.read() as st:
        return Q.findings(st, Q.latest_run(st))


def embedding_map(web: Web, request: Request):
    with web.access.read() as st:
        return web.embedding_map(st, Q.latest_run(st))


def edits(web: Web, request: Request):
    status = request.query_params.get("status") or None
    limit, offset = page_params(request, 100)
    with web.access.read() as st:
        return Q.list_edits(st, status, limit=limit, offset=offset)


def sql(web: Web, request: Request, body: dict):
    query = body.get("query")
    if not isinstance(query, str):
        raise InputError('"query" must be a string of SQL', 'send {"query": "SELECT 1"}')
    with web.access.read() as st:
        if body.get("format") == "csv":
            return Response(
                console.sql_csv(st, query),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="query.csv"'},
            )
        try:
            limit, offset = int(body.get("limit", 100)), int(body.get("offset", 0))
        except (TypeError, ValueError):
            raise InputError("limit and offset must be integers", "e.g. 100, 0") from None
        return console.sql_page(st, query, limit=limit, offset=offset)
