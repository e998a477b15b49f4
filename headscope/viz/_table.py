"""Per-head tables for a page: sorted by value, the first rows shown and the rest folded away."""

from __future__ import annotations

from typing import Any

from headscope.errors import ConfigError

__all__ = ["ranked_table"]


def ranked_table(frame: Any, *, value: str = "value", shown: int = 20) -> str:
    """HTML of ``frame`` sorted by ``value`` (highest first, NaN last): ``shown`` rows, the rest in ``<details>``.

    >>> import pandas as pd
    >>> page = ranked_table(pd.DataFrame({"label": ["a", "b", "c"], "value": [0.1, 0.9, 0.5]}), shown=2)
    >>> page.index(">b<") < page.index(">c<") < page.index("<details>") < page.index(">a<")
    True
    """
    if value not in frame.columns:
        raise ConfigError(f"frame has no column {value!r} to sort by; columns: {list(frame.columns)}")
    if shown < 1:
        raise ConfigError(f"shown must be at least 1 row; got {shown}")
    ranked = frame.sort_values(value, ascending=False, kind="stable", na_position="last").reset_index(drop=True)
    ranked.index += 1  # the rank
    top = ranked.iloc[:shown].to_html(border=0, classes="frame", float_format=lambda v: f"{v:.4g}")
    rest = ranked.iloc[shown:]
    if rest.empty:
        return top
    folded = rest.to_html(border=0, classes="frame", float_format=lambda v: f"{v:.4g}")
    return f"{top}<details><summary>the other {len(rest)} rows</summary>{folded}</details>"
