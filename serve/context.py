"""What every route of the app shares: the store access, the templates, the caches, and the two
wrappers that give a handler the store's error mapping (`html` for pages, `api` for JSON)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from ..store.errors import DatacureError, InputError, StoreBusyError
from . import queries as Q
from .access import LastGood, Memo, StoreAccess
from .security import Guard

HERE = Path(__file__).resolve().parent  # the real folder (an editable install links files)

STALE_BANNER = (
    b'<div id="dc-stale" class="stale" role="status">'
    b"The store is busy (another command is writing it): this is the last "
    b"view; it reloads when the store is free.</div>"
)


def templates():
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
    import io

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


def error(status: int, problem: str, fix: str = "", headers: dict | None = None) -> JSONResponse:
    """The API's error body: `{"error": problem, "fix": fix}`."""
    return JSONResponse({"error": problem, "fix": fix}, status_code=status, headers=headers)


async def json_body(request: Request) -> dict:
    """The request's body as a JSON object (InputError otherwise)."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InputError("the request body is not JSON", "send a JSON object") from None
    if not isinstance(body, dict):
        raise InputError("the request body must be a JSON object", 'e.g. {"query": "..."}')
    return body


def to_int(v, name: str) -> int:
    """`v` as an int (InputError for booleans and anything int() refuses)."""
    if isinstance(v, bool):
        raise InputError(f"{name} must be an integer, got {v!r}", f"give {name} as a number")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise InputError(
            f"{name} must be an integer, got {v!r}", f"give {name} as a number"
        ) from None


def int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"{name}={raw!r} is not an integer", f"give {name} as a number") from None


def page_params(request: Request, limit: int) -> tuple[int, int]:
    """`limit` and `offset` of a paged list (defaults: `limit`, 0)."""
    return int_param(request, "limit", limit), int_param(request, "offset", 0)


def row_params(request: Request) -> tuple[int, int | None]:
    """The row id in the path and the `run` asked for (None: the latest)."""
    return int(request.path_params["row_id"]), Q.IssueFilter.from_query(request.query_params).run


@dataclass
class Web:
    """The app's shared state (one per `create_app`)."""

    access: StoreAccess
    guard: Guard
    env: object = field(default_factory=templates)
    last_good: LastGood = field(default_factory=LastGood)
    memo: Memo = field(default_factory=Memo)
    thumbs: Thumbs = field(default_factory=Thumbs)

    # --- responses ---------------------------------------------------------------------------
    def page(
        self,
        name: str,
        request: Request,
        http_status: int = 200,
        headers: dict | None = None,
        **ctx,
    ) -> HTMLResponse:
        ctx.setdefault("title", name)
        html = self.env.get_template(f"{name}.html").render(
            request_path=request.url.path,
            token=self.guard.token or "",
            store=str(self.access.path),
            **ctx,
        )
        return HTMLResponse(html, status_code=http_status, headers=headers)

    def html_error(self, request: Request, status: int, exc: DatacureError) -> HTMLResponse:
        return self.page(
            "error",
            request,
            http_status=status,
            title="error",
            problem=exc.problem,
            fix=exc.fix or "",
        )

    async def guarded(self, request: Request, work, html: bool = False) -> Response:
        """Run `work()` in a thread with the store's error mapping; remember good GETs and show
        the last one while the store is busy."""
        key = str(request.url.path) + "?" + str(request.url.query)
        try:
            resp = await run_in_threadpool(work)
        except StoreBusyError as exc:
            return self._busy(request, key, exc, html)
        except Q.NotFound as exc:
            if html:
                return self.html_error(request, 404, exc)
            return error(404, exc.problem, exc.fix or "")
        except DatacureError as exc:
            if html:
                return self.html_error(request, 400, exc)
            return error(400, exc.problem, exc.fix or "")
        if request.method == "GET" and resp.status_code == 200 and hasattr(resp, "body"):
            self.last_good.put(key, bytes(resp.body), resp.media_type or "application/json")
        return resp

    def _busy(self, request: Request, key: str, exc: StoreBusyError, html: bool) -> Response:
        """The last good view of a GET (marked stale), else a 503 with Retry-After."""
        hit = self.last_good.get(key) if request.method == "GET" else None
        if hit is not None:
            body, media = hit
            if media.startswith("text/html"):
                body = body.replace(b"<!--dc-banner-->", STALE_BANNER, 1)
            return Response(
                body, media_type=media, headers={"X-Datacure-Stale": "1", "Retry-After": "2"}
            )
        if html:
            return self.page(
                "busy",
                request,
                http_status=503,
                headers={"Retry-After": "2"},
                title="store busy",
                problem=exc.problem,
                fix=exc.fix or "",
            )
        return error(503, exc.problem, exc.fix or "", headers={"Retry-After": "2"})

    # --- handler wrappers --------------------------------------------------------------------
    def html(self, fn: Callable[[Request], Response]):
        """A page handler: `fn(request)` runs in a thread; errors become the error page."""

        async def handler(request: Request):
            return await self.guarded(request, lambda: fn(request), html=True)

        return handler

    def api(self, fn: Callable, body: bool = False):
        """A JSON handler: `fn(request)` (or `fn(request, body)` with the parsed JSON object
        when `body`) runs in a thread; a dict, list or None it returns is sent as JSON, a
        Response as it is; errors become `{"error", "fix"}` with their status."""

        async def handler(request: Request):
            args = [request]
            if body:
                try:
                    args.append(await json_body(request))
                except InputError as exc:
                    return error(400, exc.problem, exc.fix or "")

            def work():
                out = fn(*args)
                return out if isinstance(out, Response) else JSONResponse(out)

            return await self.guarded(request, work)

        return handler

    # --- reads kept while the store is unchanged ----------------------------------------------
    def cached(self, key: str, compute):
        version = self.access.version()
        hit = self.memo.get(key, version)
        if hit is None:
            hit = compute()
            self.memo.put(key, version, hit)
        return hit

    def facets(self, st, run_id) -> tuple[list, list, list]:
        """Auditors of the run, labels and splits for the filters (each a scan of a column of
        samples at 1M rows)."""
        return self.cached(
            f"facets-{run_id}", lambda: (Q.auditors(st, run_id), Q.labels(st), st.splits())
        )

    def count(self, st, flt) -> int:
        """The total of a filter (a second scan of `issues`)."""
        key = "count-" + json.dumps(flt.as_query(), sort_keys=True)
        return self.cached(key, lambda: Q.count_issues(st, flt))

    def summary(self, st) -> dict:
        return self.cached("summary", lambda: Q.summary(st))

    def embedding_map(self, st, run_id) -> dict | None:
        return self.cached("map", lambda: Q.embedding_map(st, run_id) or {}) or None
