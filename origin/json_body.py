"""Request bodies as JSON, strictly: RFC 8259 text of Unicode strings, read up to a limit.

Python's ``json`` accepts more than JSON: ``NaN`` and ``Infinity``, which it then writes back
out (so a stored asset would make every page that lists it unparseable for Godot), and
``\\ud800`` escapes of lone surrogates, which are not Unicode text and which no database
encodes (an event holding one failed every write of its batch). Both are refused here, as is
nesting deep enough to exhaust the parser's recursion, each as a 400 ``bad-json``.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from aiohttp import web

from . import problems

# A document (an asset, a patch) larger than this is not one a client means to send.
MAX_JSON_BODY = 1 << 20


class NotJson(ValueError):
    """Text that is not strict JSON; the message says why."""


def _reject_constant(name: str) -> NoReturn:
    raise NotJson(f"{name} is not valid JSON")


def loads(text: str) -> Any:
    """``json.loads``, strict; raises NotJson (a ValueError)."""
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise NotJson("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an int of 4,300 digits and more
        raise NotJson(str(exc)) from None
    # A lone surrogate can only come from a \u escape, so most documents skip the check.
    if "\\u" in text:
        try:
            json.dumps(doc, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise NotJson("a \\u escape is half of a surrogate pair, not a character") from None
    return doc


async def read_json(request: web.Request, limit: int) -> Any:
    """The request's body of at most ``limit`` bytes, parsed (413 and 400 otherwise)."""
    if request.content_length is not None and request.content_length > limit:
        raise problems.too_large(limit)
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise problems.too_large(limit)
    try:
        return loads(body.decode())  # JSON on the wire is UTF-8 (RFC 8259)
    except UnicodeDecodeError as exc:
        raise problems.bad_request("bad-json", f"the body is not UTF-8: {exc}") from None
    except NotJson as exc:
        raise problems.bad_request("bad-json", f"the body is not JSON: {exc}") from None
