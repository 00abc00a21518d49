"""The project's own errors: each names where the problem is and what it is.

The command line catches :class:`MrlibError` and prints ``error: <where>: <problem>``
with a non-zero exit status, so a user never sees a traceback from inside a library
for a problem with their input.
"""

from __future__ import annotations

from pathlib import Path


class MrlibError(Exception):
    """An error the user can act on.

    Args:
        where: the file, directory or parameter the problem is in.
        problem: what is wrong, in one sentence.
    """

    exit_code = 2

    def __init__(self, where: str | Path, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class DataError(MrlibError):
    """A data file or directory is missing, unreadable or malformed."""


class ParameterError(MrlibError):
    """A preset, parameter or command-line value is unknown or of the wrong type."""
