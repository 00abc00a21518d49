"""Reading the small CSV tables of the datasets (labels, metadata, boxes) with clear errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import DataError


def read_csv(path: str | Path, what: str, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` of every column as text, or a :class:`DataError` naming ``path``.

    Args:
        what: what the file is, for the message (e.g. "metadata file").
        kwargs: passed to ``pandas.read_csv`` (e.g. ``header=None``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} does not exist")
    try:
        return pd.read_csv(path, dtype=str, skipinitialspace=True, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(path, f"{what} is empty") from None
    except Exception as exc:  # ParserError, UnicodeDecodeError, ...
        raise DataError(path, f"not a readable CSV ({type(exc).__name__}: {exc})") from None
