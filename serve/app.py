"""The web app: server-rendered pages (Jinja2, autoescaped) and the JSON API under /api/.

Pages: `/` overview (the report's summary, live), `/issues` flagged rows filtered and paginated
in DuckDB with review buttons and bulk actions, `/rows/{row_id}` one row with its evidence,
`/findings` each auditor's dataset-level findings and the slices, `/sql` a read-only console,
`/map` the embedding map, `/edits` the planned edits. The pages use the JSON API through one
small script (`static/app.js`); nothing is loaded from elsewhere.

API: `GET /api/summary`, `GET /api/issues`, `GET /api/rows/{row_id}`, `GET /api/findings`,
`GET /api/map`, `GET /api/edits`, `GET /api/health`, `POST /api/sql`, `POST /api/reviews`.
Errors are JSON `{"error": problem, "fix": fix}` with 400 (bad input), 401 (token), 403
(cross-site), 404, or 503 with `Retry-After` while another process writes the store.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..store.errors import DatacureError, InputError, StoreBusyError
from . import queries as Q
from .access import LastGood, Memo, StoreAccess
from .security import HEADERS, Guard, cookie_name

HERE = Path(__file__).resolve().parent  # the real folder (an editable install links files)
log = logging.getLogger("datacure.serve")
THUMB_SIZES = {"s": 96, "m": 480}


def _templates():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=True,  # every value is escaped unless a template says otherwise
        undefined=jinja2.StrictUndefined,
    )

    def fmt(v, digits: int = 4):
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.{digits}f}".rstrip("0").rstrip(".") if v == v else "-"
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, (dict, list)):
            return json.dumps(v, ensure_ascii=False, default=str)[:400]
        return str(v)

    env.filters["fmt"] = fmt
    env.filters["pct"] = lambda v: "-" if v is None else f"{100 * float(v):.2f}%"
    env.globals["urlencode"] = urlencode
    return env


class Thumbs:
    """Thumbnails made on first request and kept (LRU, bounded in bytes)."""

    def __init__(self, max_bytes: int = 64 << 20):
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes
        self._lock = threading.Lock()

    def get(self, path: str, size: int) -> bytes | None:
        import os

        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            return None
        key = (path, size, mtime)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        data = _thumbnail(path, size)
        if data is None:
            return None
        with self._lock:
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self._max and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)
        return data


def _thumbnail(path: str, size: int) -> bytes | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=False)
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - a missing or broken file shows as "no image"
        return None


def create_app(
    db: str | Path,
    token: str | None = None,
    port: int = 8765,
    loopback: bool = True,
    busy_wait: float = 2.0,
    linger: float | None = None,
) -> Starlette:
    """The app over the store at `db` (see module doc). `port` and `loopback` are those of the
    socket it will be served on (they decide the Host and cookie checks)."""
    access = StoreAccess(db, busy_wait=busy_wait, linger=linger)
    guard = Guard(token, port, loopback)
    env = _templates()
    last_good = LastGood()
    memo = Memo()
    thumbs = Thumbs()

    # --- plumbing ------------------------------------------------------------------------------
    def error(status: int, problem: str, fix: str = "", headers: dict | None = None):
        return JSONResponse({"error": problem, "fix": fix}, status_code=status, headers=headers)

    def page(
        name: str, request: Request, http_status: int = 200, headers: dict | None = None, **ctx
    ) -> HTMLResponse:
        ctx.setdefault("title", name)
        html = env.get_template(f"{name}.html").render(
            request_path=request.url.path,
            token=guard.token or "",
            store=str(access.path),
            **ctx,
        )
        return HTMLResponse(html, status_code=http_status, headers=headers)

    async def guarded(request: Request, work, html: bool = False):
        """Run `work()` in a thread with the store's error mapping; remember good GETs and show
        the last one while the store is busy."""
        key = str(request.url.path) + "?" + str(request.url.query)
        try:
            resp = await run_in_threadpool(work)
        except StoreBusyError as exc:
            hit = last_good.get(key) if request.method == "GET" else None
            if hit is not None:
                body, media = hit
                if media.startswith("text/html"):
                    banner = (
                        b'<div id="dc-stale" class="stale" role="status">'
                        b"The store is busy (another command is writing it): this is the last "
                        b"view; it reloads when the store is free.</div>"
                    )
                    body = body.replace(b"<!--dc-banner-->", banner, 1)
                return Response(
                    body,
                    media_type=media,
                    headers={"X-Datacure-Stale": "1", "Retry-After": "2"},
                )
            if html:
                return page(
                    "busy",
                    request,
                    http_status=503,
                    headers={"Retry-After": "2"},
                    title="store busy",
                    problem=exc.problem,
                    fix=exc.fix or "",
                )
            return error(503, exc.problem, exc.fix or "", headers={"Retry-After": "2"})
        except Q.NotFound as exc:
            if html:
                return _html_error(request, 404, exc)
            return error(404, exc.problem, exc.fix or "")
        except DatacureError as exc:
            if html:
                return _html_error(request, 400, exc)
            return error(400, exc.problem, exc.fix or "")
        if request.method == "GET" and resp.status_code == 200 and hasattr(resp, "body"):
            last_good.put(key, bytes(resp.body), resp.media_type or "application/json")
        return resp

    def _html_error(request: Request, status: int, exc: DatacureError) -> HTMLResponse:
        return page(
            "error",
            request,
            http_status=status,
            title="error",
            problem=exc.problem,
            fix=exc.fix or "",
        )

    def facets(st, run_id) -> tuple[list, list, list]:
        """Auditors of the run, labels and splits for the filters (each a scan of a column of
        samples at 1M rows): kept while the store is unchanged."""
        version = access.version()
        hit = memo.get(f"facets-{run_id}", version)
        if hit is None:
            hit = (Q.auditors(st, run_id), Q.labels(st), st.splits())
            memo.put(f"facets-{run_id}", version, hit)
        return hit

    def cached_count(st, flt) -> int:
        """The total of a filter (a second scan of `issues`), kept while the store is unchanged."""
        version = access.version()
        key = "count-" + json.dumps(flt.as_query(), sort_keys=True)
        hit = memo.get(key, version)
        if hit is None:
            hit = Q.count_issues(st, flt)
            memo.put(key, version, hit)
        return hit

    def cached_summary(st) -> dict:
        version = access.version()
        hit = memo.get("summary", version)
        if hit is None:
            hit = Q.summary(st)
            memo.put("summary", version, hit)
        return hit

    def cached_map(st, run_id) -> dict | None:
        version = access.version()
        hit = memo.get("map", version)
        if hit is None:
            hit = Q.embedding_map(st, run_id) or {}
            memo.put("map", version, hit)
        return hit or None

    def int_param(request: Request, name: str, default: int) -> int:
        raw = request.query_params.get(name)
        if raw in (None, ""):
            return default
        try:
            return int(raw)
        except ValueError:
            raise InputError(
                f"{name}={raw!r} is not an integer", f"give {name} as a number"
            ) from None

    # --- pages ---------------------------------------------------------------------------------
    async def overview(request: Request):
        def work():
            with access.read() as st:
                summ = cached_summary(st)
            return page("overview", request, title="overview", s=summ)

        return await guarded(request, work, html=True)

    async def issues_page(request: Request):
        def work():
            flt = Q.IssueFilter.from_query(request.query_params)
            limit = int_param(request, "limit", 50)
            offset = int_param(request, "offset", 0)
            with access.read() as st:
                data = Q.list_issues(st, flt, limit=limit, offset=offset, count=cached_count)
                auds, labels, splits = facets(st, data["run_id"])
            return page(
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

        return await guarded(request, work, html=True)

    async def row_page(request: Request):
        def work():
            rid = int(request.path_params["row_id"])
            run = Q.IssueFilter.from_query(request.query_params).run
            with access.read() as st:
                d = Q.row_detail(st, rid, run)
                labels = facets(st, d["run_id"])[1]
                views = _finding_views(st, d)
            return page("row", request, title=f"row {rid}", d=d, labels=labels, views=views)

        return await guarded(request, work, html=True)

    async def findings_page(request: Request):
        def work():
            with access.read() as st:
                run_id = Q.latest_run(st)
                f = Q.findings(st, run_id)
            from ..report.views import auditor_view

            for a in f["auditors"]:
                view = auditor_view(a["name"])
                a["view"] = _markup(view(a["info"])) if view else ""
                a["info_text"] = json.dumps(a["info"], indent=1, default=str)[:6000]
            return page("findings", request, title="findings", f=f)

        return await guarded(request, work, html=True)

    async def sql_page(request: Request):
        return page("sql", request, title="SQL console", query=request.query_params.get("q", ""))

    async def map_page(request: Request):
        return page("map", request, title="embedding map")

    async def edits_page(request: Request):
        def work():
            status = request.query_params.get("status") or None
            limit = int_param(request, "limit", 100)
            offset = int_param(request, "offset", 0)
            with access.read() as st:
                data = Q.list_edits(st, status, limit=limit, offset=offset)
            return page("edits", request, title="planned edits", data=data, status=status or "")

        return await guarded(request, work, html=True)

    async def thumb(request: Request):
        def work():
            rid = int(request.path_params["row_id"])
            size = THUMB_SIZES.get(request.query_params.get("size", "s"), THUMB_SIZES["s"])
            with access.read() as st:
                path = Q.image_path(st, rid)  # the only file the app opens: a row's own image
            data = thumbs.get(path, size) if path else None
            if data is None:
                return Response(status_code=404)
            return Response(
                data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
            )

        return await guarded(request, work)

    # --- API -------------------------------------------------------------------------------------
    async def api_health(request: Request):
        def work():
            with access.read() as st:
                return JSONResponse({"ok": True, "run_id": Q.latest_run(st)})

        return await guarded(request, work)

    async def api_summary(request: Request):
        def work():
            with access.read() as st:
                return JSONResponse(cached_summary(st))

        return await guarded(request, work)

    async def api_issues(request: Request):
        def work():
            flt = Q.IssueFilter.from_query(request.query_params)
            limit = int_param(request, "limit", 50)
            offset = int_param(request, "offset", 0)
            count = request.query_params.get("count", "1") not in ("0", "false")
            with access.read() as st:
                total = cached_count if count else False
                return JSONResponse(Q.list_issues(st, flt, limit=limit, offset=offset, count=total))

        return await guarded(request, work)

    async def api_row(request: Request):
        def work():
            rid = int(request.path_params["row_id"])
            run = Q.IssueFilter.from_query(request.query_params).run
            with access.read() as st:
                return JSONResponse(Q.row_detail(st, rid, run))

        return await guarded(request, work)

    async def api_findings(request: Request):
        def work():
            with access.read() as st:
                return JSONResponse(Q.findings(st, Q.latest_run(st)))

        return await guarded(request, work)

    async def api_map(request: Request):
        def work():
            with access.read() as st:
                return JSONResponse(cached_map(st, Q.latest_run(st)))

        return await guarded(request, work)

    async def api_edits(request: Request):
        def work():
            status = request.query_params.get("status") or None
            limit = int_param(request, "limit", 100)
            offset = int_param(request, "offset", 0)
            with access.read() as st:
                return JSONResponse(Q.list_edits(st, status, limit=limit, offset=offset))

        return await guarded(request, work)

    async def _body(request: Request) -> dict:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise InputError("the request body is not JSON", "send a JSON object") from None
        if not isinstance(body, dict):
            raise InputError("the request body must be a JSON object", 'e.g. {"query": "..."}')
        return body

    async def api_sql(request: Request):
        try:
            body = await _body(request)
        except InputError as exc:
            return error(400, exc.problem, exc.fix or "")

        def work():
            query = body.get("query")
            if not isinstance(query, str):
                raise InputError('"query" must be a string of SQL', 'send {"query": "SELECT 1"}')
            with access.read() as st:
                if body.get("format") == "csv":
                    text = Q.sql_csv(st, query)
                    return Response(
                        text,
                        media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="query.csv"'},
                    )
                try:
                    limit, offset = int(body.get("limit", 100)), int(body.get("offset", 0))
                except (TypeError, ValueError):
                    raise InputError("limit and offset must be integers", "e.g. 100, 0") from None
                return JSONResponse(Q.sql_page(st, query, limit=limit, offset=offset))

        return await guarded(request, work)

    async def api_reviews(request: Request):
        try:
            body = await _body(request)
        except InputError as exc:
            return error(400, exc.problem, exc.fix or "")

        def work():
            from ..repair.review import apply_review

            decision = body.get("decision")
            new_label = body.get("new_label")
            note = str(body.get("note") or "")
            if "flags" in body:
                raw = body["flags"]
                if not isinstance(raw, list) or not all(
                    isinstance(p, (list, tuple)) and len(p) == 2 for p in raw
                ):
                    raise InputError(
                        '"flags" must be a list of [row_id, auditor] pairs',
                        'e.g. {"flags": [[12, "label"]], "decision": "accept"}',
                    )
                flags = [(_int(p[0], "row_id"), str(p[1])) for p in raw]
                run = body.get("run")
            elif "filter" in body:
                if not isinstance(body["filter"], dict):
                    raise InputError('"filter" must be an object', 'e.g. {"auditor": "label"}')
                flt = Q.IssueFilter.from_query(body["filter"])
                flags, run = None, flt.run
            else:
                if "row_id" not in body or "auditor" not in body:
                    raise InputError(
                        "a review names the flag: row_id and auditor",
                        'send {"row_id": 12, "auditor": "label", "decision": "accept"}',
                    )
                flags = [(_int(body["row_id"], "row_id"), str(body["auditor"]))]
                run = body.get("run")
            with access.write() as st:
                if flags is None:
                    run, flags = Q.matching_flags(st, flt)
                    import polars as pl

                    flags = pl.from_arrow(flags)
                res = apply_review(
                    st,
                    flags,
                    decision,
                    new_label=new_label,
                    note=note,
                    run_id=None if run is None else _int(run, "run"),
                )
            return JSONResponse(
                {
                    "decision": res.decision,
                    "flags": res.flags,
                    "edits_changed": res.edits_changed,
                }
            )

        return await guarded(request, work)

    routes = [
        Route("/", overview),
        Route("/issues", issues_page),
        Route("/rows/{row_id:int}", row_page),
        Route("/findings", findings_page),
        Route("/sql", sql_page),
        Route("/map", map_page),
        Route("/edits", edits_page),
        Route("/thumb/{row_id:int}", thumb),
        Route("/api/health", api_health),
        Route("/api/summary", api_summary),
        Route("/api/issues", api_issues),
        Route("/api/rows/{row_id:int}", api_row),
        Route("/api/findings", api_findings),
        Route("/api/map", api_map),
        Route("/api/edits", api_edits),
        Route("/api/sql", api_sql, methods=["POST"]),
        Route("/api/reviews", api_reviews, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    async def checks(request: Request, call_next):
        if not guard.host_ok(request.headers.get("host")):
            return _secure(
                error(
                    403,
                    f"unexpected Host {request.headers.get('host')!r}",
                    "open the address `datacure serve` printed",
                )
            )
        query_token = request.query_params.get("token")
        if not guard.token_ok(request.headers, request.cookies, query_token):
            return _secure(
                error(
                    401,
                    "this server needs its token",
                    "open the URL `datacure serve` printed (it carries ?token=), or send "
                    "`Authorization: Bearer TOKEN`",
                )
            )
        if request.method not in ("GET", "HEAD"):
            why = guard.same_origin(request.headers)
            if why:
                return _secure(error(403, why, "send the request from the app's own pages"))
        if query_token and request.method == "GET" and guard.token:
            # the printed URL: keep the token in a cookie and take it out of the address bar
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (("?" + urlencode(rest)) if rest else "")
            resp = RedirectResponse(target, status_code=303)
            resp.set_cookie(
                cookie_name(guard.port),
                guard.token,
                httponly=True,
                samesite="strict",
                path="/",
            )
            return _secure(resp)
        resp = await call_next(request)
        return _secure(resp, keep_cache=request.url.path.startswith(("/thumb/", "/static/")))

    app = Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=checks)])
    app.state.access = access
    return app


def _secure(resp: Response, keep_cache: bool = False) -> Response:
    for k, v in HEADERS.items():
        if k == "Cache-Control" and keep_cache:
            resp.headers.setdefault(k, "private, max-age=3600")
            continue
        resp.headers[k] = v
    return resp


def _int(v, name: str) -> int:
    if isinstance(v, bool):
        raise InputError(f"{name} must be an integer, got {v!r}", f"give {name} as a number")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise InputError(
            f"{name} must be an integer, got {v!r}", f"give {name} as a number"
        ) from None


def _markup(html: str):
    """HTML built by the report's own escaping renderers (trusted: every value in it is
    escaped there)."""
    from markupsafe import Markup

    return Markup(html)


def _finding_views(st, d: dict) -> dict:
    """For a row's flags whose auditor has a findings view in the report (drift tables, the
    spurious group heatmap, cue tables), that view of the auditor's info."""
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
        from ..report.summary import _loads

        info = _loads(info) or {}
        if isinstance(info, dict):
            out[f["auditor"]] = _markup(view(info))
    return out
