"""Run the app on uvicorn: bind the socket, print the URL, stop cleanly on Ctrl-C.

The socket is bound here, before uvicorn starts, so `port=0` picks a free port and the printed
URL names the real one, and a port in use is a clear InputError instead of a traceback.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..store.errors import InputError
from .security import is_loopback, new_token

DEFAULT_PORT = 8765
DEFAULT_HOST = "127.0.0.1"


def _need_web_stack() -> None:
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"the browser app needs {exc.name}, which is not installed",
            'install it with `pip install "starlette>=1.10" "uvicorn>=0.55" "jinja2>=3.1.6"` '
            "(or reinstall datacure)",
        ) from None


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"cannot resolve --host {host!r}: {exc}", "use 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            "pick another port with --port N (or --port 0 for any free port)",
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@dataclass
class ServerHandle:
    """A server running in a background thread (`serve(..., background=True)`)."""

    url: str
    port: int
    token: str | None
    _server: object = field(repr=False, default=None)
    _thread: threading.Thread | None = field(repr=False, default=None)

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        access = getattr(getattr(self._server, "config", None), "app", None)
        access = getattr(getattr(access, "state", None), "access", None)
        if access is not None:
            access.close()  # a lingering connection would hold the file after stop()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    db: str | os.PathLike,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    *,
    background: bool = False,
    say: Callable[[str], None] | None = None,
    busy_wait: float = 2.0,
    linger: float | None = None,
) -> ServerHandle | None:
    """Serve the store at `db` on http://host:port/ until Ctrl-C (or, with `background`, in a
    thread: returns a handle with `.url` and `.stop()`).

    Binds 127.0.0.1 by default. Any other address needs a token: `token`, or one generated and
    printed; every request must then carry it (see serve/security.py)."""
    _need_web_stack()
    import uvicorn

    from .app import create_app

    path = Path(db)
    _check_store(path)
    loopback = is_loopback(host)
    generated = False
    if not loopback and not token:
        token, generated = new_token(), True
    sock = _bind(host, int(port))
    real_port = sock.getsockname()[1]
    url = _url(host, real_port, token)
    app = create_app(
        path, token=token, port=real_port, loopback=loopback, busy_wait=busy_wait, linger=linger
    )
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    say = say or print
    if background:
        return _in_background(server, sock, url, real_port, token)
    say(f"datacure serve: {url}")
    if generated:
        say(f"token (generated; every request must carry it): {token}")
    say("press Ctrl-C to stop")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        app.state.access.close()
    return None


def _check_store(path: Path) -> None:
    """A missing path or a file that is no store is an InputError here, before binding."""
    from ..store.db import Store
    from ..store.errors import StoreBusyError

    try:
        Store(path, read_only=True, create=False).close()
    except StoreBusyError:
        pass  # a command is writing it: the app answers "busy" until it is done


def _url(host: str, port: int, token: str | None) -> str:
    """The app's address (an IPv6 host in brackets), with the token when there is one."""
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if token:
        url += f"?token={token}"
    return url


def _in_background(server, sock: socket.socket, url: str, port: int, token) -> ServerHandle:
    """Run `server` on `sock` in a daemon thread; its handle once it has started (30 s at most)."""
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="datacure-serve", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise InputError("the web server did not start", "see the log above")
        time.sleep(0.01)
    return ServerHandle(url, port, token, server, thread)
