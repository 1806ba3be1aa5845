"""Errors a user can act on. The CLI prints them (problem, then fix) and exits with code 2."""

from __future__ import annotations


class DatacureError(Exception):
    """A problem with the user's input or store, with the fix spelled out.

    `problem` says what is wrong, naming the bad value; `fix` says what to do about it.
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")


class InputError(DatacureError):
    """The source data or an option is unusable as given."""


def invalid_value(exc, problem: str, fix: str) -> InputError:
    """An InputError for a pydantic ValidationError `exc`: `problem` followed by where the first
    bad value is and what is wrong with it."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return InputError(f"{problem}{where}: {first.get('msg')}", fix)


class StoreBusyError(DatacureError):
    """Another datacure process holds the store for writing."""


class MissingDependencyError(DatacureError):
    """An optional library or a model is not installed here."""
