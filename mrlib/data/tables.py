"""Reading the small CSV tables of the datasets (labels, metadata, boxes) with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def integer_column(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse a text column as integers.

    Returns:
        ``(values, bad)``: int64 values (``-1`` where bad) and a boolean mask of the
        entries that are not finite integers within int64 (text, ``1.5``, ``inf``, ``1e400``).
    """
    num = pd.to_numeric(raw.astype(str).str.strip(), errors="coerce")
    finite = np.isfinite(num.to_numpy(dtype=np.float64, na_value=np.nan))
    small = np.abs(num.fillna(0).to_numpy(dtype=np.float64)) < 2.0**62
    ok = pd.Series(finite & small, index=raw.index)
    ok &= num.where(ok, 0) == np.round(num.where(ok, 0))
    return num.where(ok, -1).astype(np.int64), ~ok
