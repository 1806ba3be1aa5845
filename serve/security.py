"""Who may talk to the app, and how a state-changing request proves it comes from the app.

- Bound to a loopback address with no token, only this machine can connect; the `Host` header
  must name the loopback address (a page on another site that rebinds its DNS name to 127.0.0.1
  is refused, so it cannot read the store through the victim's browser).
- With a token (required to bind any other address; generated and printed when not given), every
  request must carry it: `Authorization: Bearer T`, `X-Datacure-Token: T`, or the cookie set
  when the printed URL (`/?token=T`) is first opened. Compared in constant time.
- State changes are POSTs with a JSON body (a cross-site form cannot send one without a CORS
  preflight, which the app never grants) whose `Origin`, when the browser sends one, is the app's
  own, and whose `Sec-Fetch-Site` is not `cross-site`. The cookie is `SameSite=Strict`.
- Every answer forbids framing and loading anything from elsewhere (Content-Security-Policy).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
TOKEN_HEADER = "x-datacure-token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def cookie_name(port: int) -> str:
    # cookies are shared by every port of a host: one name per port keeps two servers apart
    return f"datacure_token_{port}"


class Guard:
    """The checks above for one server (its port, whether it is on loopback, its token)."""

    def __init__(self, token: str | None, port: int, loopback: bool):
        self.token = token or None
        self.port = int(port)
        self.loopback = loopback
        names = ("127.0.0.1", "localhost", "[::1]")
        self.hosts = {f"{h}:{self.port}" for h in names}
        if self.port == 80:
            self.hosts |= set(names)

    def host_ok(self, host: str | None) -> bool:
        """On loopback without a token, only the loopback names are served (DNS rebinding)."""
        if not self.loopback or self.token:
            return True
        return (host or "").lower() in self.hosts

    def token_ok(self, headers, cookies, query_token: str | None) -> bool:
        if self.token is None:
            return True
        given = [
            headers.get(TOKEN_HEADER),
            cookies.get(cookie_name(self.port)),
            query_token,
        ]
        auth = headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        return any(g and hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    @staticmethod
    def same_origin(headers) -> str | None:
        """None when a POST may change state; otherwise why not."""
        ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return "state-changing requests must send JSON (Content-Type: application/json)"
        site = (headers.get("sec-fetch-site") or "").lower()
        if site and site not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {site})"
        origin = headers.get("origin")
        if origin is not None:
            host = headers.get("host") or ""
            if origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower()):
                return f"cross-origin request refused (Origin: {origin})"
        return None
