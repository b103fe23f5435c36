"""Query parameters shared by the listing routes."""

from __future__ import annotations

import re
from collections.abc import Mapping

from . import problems

# ASCII digits only: int() would also take " 5", "+5", "5_0" and fullwidth digits (U+FF15), which a
# cache in front (and the next reader of a log) sees as different queries for one answer.
_DIGITS = re.compile(r"[0-9]{1,9}")


def page_limit(query: Mapping[str, str], *, default: int, maximum: int) -> int:
    """The ``limit`` parameter: 1 to ``maximum``, ``default`` when absent; else a 400."""
    raw = query.get("limit")
    if raw is None:
        return default
    if _DIGITS.fullmatch(raw) is None or not 1 <= int(raw) <= maximum:
        raise problems.bad_request("bad-query", f"limit must be a whole number, 1 to {maximum}")
    return int(raw)
