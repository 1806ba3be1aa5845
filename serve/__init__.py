"""`datacure serve`: browse, query and review a store in the browser.

`create_app(db)` builds the web app (serve/app.py: pages and the JSON API under /api/) and
`serve(db, host, port, token)` runs it on uvicorn (serve/server.py). See serve/access.py for how
the app shares the store with other processes and serve/security.py for who may use it.
"""

from .server import ServerHandle, serve

__all__ = ["ServerHandle", "create_app", "serve"]


def create_app(*args, **kwargs):
    from .app import create_app as _create

    return _create(*args, **kwargs)
