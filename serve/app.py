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

The routes are in three groups: serve/pages.py (pages, thumbnails), serve/api.py (JSON reads
and SQL), serve/reviews.py (the review writes); serve/context.py holds what they share. This
module puts them together behind the Host/token/same-origin checks.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from . import api, pages, reviews
from .access import StoreAccess
from .context import HERE, Web, error
from .security import HEADERS, Guard, cookie_name


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
    web = Web(StoreAccess(db, busy_wait=busy_wait, linger=linger), Guard(token, port, loopback))
    routes = [
        *pages.routes(web),
        *api.routes(web),
        *reviews.routes(web),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=_checks(web.guard))]
    )
    app.state.access = web.access
    return app


def _checks(guard: Guard):
    """The middleware: Host, token and same-origin checks; the printed URL's token moves into a
    cookie; security headers on every response."""

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

    return checks


def _secure(resp: Response, keep_cache: bool = False) -> Response:
    for k, v in HEADERS.items():
        if k == "Cache-Control" and keep_cache:
            resp.headers.setdefault(k, "private, max-age=3600")
            continue
        resp.headers[k] = v
    return resp
