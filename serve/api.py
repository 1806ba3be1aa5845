"""The JSON API under /api/ (reads, and the read-only SQL console's POST /api/sql); the review
writes are in serve/reviews.py."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..store.errors import InputError
from . import queries as Q
from .context import Web, int_param


def routes(web: Web) -> list[Route]:
    def health(request: Request):
        with web.access.read() as st:
            return {"ok": True, "run_id": Q.latest_run(st)}

    def summary(request: Request):
        with web.access.read() as st:
            return web.summary(st)

    def issues(request: Request):
        flt = Q.IssueFilter.from_query(request.query_params)
        limit = int_param(request, "limit", 50)
        offset = int_param(request, "offset", 0)
        count = request.query_params.get("count", "1") not in ("0", "false")
        with web.access.read() as st:
            total = web.count if count else False
            return Q.list_issues(st, flt, limit=limit, offset=offset, count=total)

    def row(request: Request):
        rid = int(request.path_params["row_id"])
        run = Q.IssueFilter.from_query(request.query_params).run
        with web.access.read() as st:
            return Q.row_detail(st, rid, run)

    def findings(request: Request):
        with web.access.read() as st:
            return Q.findings(st, Q.latest_run(st))

    def embedding_map(request: Request):
        with web.access.read() as st:
            return web.embedding_map(st, Q.latest_run(st))

    def edits(request: Request):
        status = request.query_params.get("status") or None
        limit = int_param(request, "limit", 100)
        offset = int_param(request, "offset", 0)
        with web.access.read() as st:
            return Q.list_edits(st, status, limit=limit, offset=offset)

    def sql(request: Request, body: dict):
        query = body.get("query")
        if not isinstance(query, str):
            raise InputError('"query" must be a string of SQL', 'send {"query": "SELECT 1"}')
        with web.access.read() as st:
            if body.get("format") == "csv":
                return Response(
                    Q.sql_csv(st, query),
                    media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="query.csv"'},
                )
            try:
                limit, offset = int(body.get("limit", 100)), int(body.get("offset", 0))
            except (TypeError, ValueError):
                raise InputError("limit and offset must be integers", "e.g. 100, 0") from None
            return Q.sql_page(st, query, limit=limit, offset=offset)

    return [
        Route("/api/health", web.api(health)),
        Route("/api/summary", web.api(summary)),
        Route("/api/issues", web.api(issues)),
        Route("/api/rows/{row_id:int}", web.api(row)),
        Route("/api/findings", web.api(findings)),
        Route("/api/map", web.api(embedding_map)),
        Route("/api/edits", web.api(edits)),
        Route("/api/sql", web.api(sql, body=True), methods=["POST"]),
    ]
