"""The review writes: POST /api/reviews records decisions on flags (one flag, a list of
[row_id, auditor] pairs, or every flag a filter matches) through repair/review.py."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from ..store.errors import InputError
from . import queries as Q
from .context import Web, to_int


def routes(web: Web) -> list[Route]:
    def post_review(request: Request, body: dict):
        from ..repair.review import apply_review

        flags, flt, run = _flags(body)
        with web.access.write() as st:
            if flags is None:
                run, flags = Q.matching_flags(st, flt)
                import polars as pl

                flags = pl.from_arrow(flags)
            res = apply_review(
                st,
                flags,
                body.get("decision"),
                new_label=body.get("new_label"),
                note=str(body.get("note") or ""),
                run_id=None if run is None else to_int(run, "run"),
            )
        return {"decision": res.decision, "flags": res.flags, "edits_changed": res.edits_changed}

    return [Route("/api/reviews", web.api(post_review, body=True), methods=["POST"])]


def _flags(body: dict) -> tuple[list | None, Q.IssueFilter | None, object]:
    """The flags a review names: (pairs, None, run) or (None, filter, the filter's run)."""
    if "flags" in body:
        raw = body["flags"]
        if not isinstance(raw, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 for p in raw
        ):
            raise InputError(
                '"flags" must be a list of [row_id, auditor] pairs',
                'e.g. {"flags": [[12, "label"]], "decision": "accept"}',
            )
        return [(to_int(p[0], "row_id"), str(p[1])) for p in raw], None, body.get("run")
    if "filter" in body:
        if not isinstance(body["filter"], dict):
            raise InputError('"filter" must be an object', 'e.g. {"auditor": "label"}')
        flt = Q.IssueFilter.from_query(body["filter"])
        return None, flt, flt.run
    if "row_id" not in body or "auditor" not in body:
        raise InputError(
            "a review names the flag: row_id and auditor",
            'send {"row_id": 12, "auditor": "label", "decision": "accept"}',
        )
    return [(to_int(body["row_id"], "row_id"), str(body["auditor"]))], None, body.get("run")
