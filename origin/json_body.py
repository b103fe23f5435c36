"""Request bodies as JSON, strictly: RFC 8259 text of Unicode strings, read up to a limit.

Python's ``json`` accepts more than JSON: ``NaN`` and ``Infinity``, which it then writes back
out (so a stored asset would make every page that lists it unparseable for Godot), and
``\\ud800`` escapes of lone surrogates, which are not Unicode text and which no database
encodes (an event holding one failed every write of its batch). Both are refused here, as is a
number beyond a double's range (``1e400`` became ``inf``, which PostgreSQL's JSONB refuses and
no JSON can say), each as a 400 ``bad-json``.

A request body (``read_json``) is held to two more rules, since what it carries is stored or
written out again: it nests at most ``MAX_DEPTH`` levels (SQLAlchemy's JSON encoder recursed
out at about 970 levels under its greenlet: a 500 on PostgreSQL), and no string or key holds
U+0000 (PostgreSQL's text and JSONB cannot hold NUL; asyncpg refused it, a 500).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, NoReturn

from aiohttp import web

from . import problems

# A document (an asset, a patch) larger than this is not one a client means to send.
MAX_JSON_BODY = 1 << 20

# Levels of nesting in a request body, the body's own object or array the first. Far below
# what any encoder's recursion reaches, and far above what an asset's attributes need.
MAX_DEPTH = 64

# An integer literal with more digits than this is beyond a double's range (about 1.8e308).
_MAX_INT_DIGITS = len(str(int(sys.float_info.max)))


class NotJson(ValueError):
    """Text that is not strict JSON; the message says why."""


class _TooDeep(NotJson):
    """Nested past the parser's recursion (some hundreds of levels, with the stack in use)."""


def _reject_constant(name: str) -> NoReturn:
    raise NotJson(f"{name} is not valid JSON")


def _out_of_range(text: str) -> NotJson:
    shown = text if len(text) <= 24 else f"{text[:16]}... ({len(text)} characters)"
    return NotJson(f"the number {shown} is out of range (a double's, about 1.8e308)")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _out_of_range(text)
    return value


def _int(text: str) -> int:
    # Longer than a double's integers: refused before int(), which for 4,300 digits and more
    # raises a ValueError of its own (and takes time quadratic in the length below that).
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _out_of_range(text)
    value = int(text)
    if abs(value) > sys.float_info.max:
        raise _out_of_range(text)
    return value


def loads(text: str) -> Any:
    """``json.loads``, strict; raises NotJson (a ValueError).

    Integers are kept exactly (20-digit ids round-trip through every catalog); every number,
    integer or not, lies within a double's range, so every client can read it as one.
    """
    return _parse(text)[0]


def loads_body(text: str) -> Any:
    """``loads`` held to a request body's two more rules as well (``check_document``): what
    ``read_json`` does with the body's text; raises NotJson."""
    doc, escapes = _parse(text)
    check_document(doc, escapes=escapes and "\\u0000" in text)
    return doc


def _parse(text: str) -> tuple[Any, bool]:
    """The document, and whether its text has any ``\\u`` escape."""
    try:
        doc = json.loads(text, parse_constant=_reject_constant, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise _TooDeep("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NotJson from a hook
        raise NotJson(str(exc)) from None
    # A lone surrogate can only come from a \u escape, so most documents skip the check.
    escapes = "\\u" in text
    if escapes:
        try:
            json.dumps(doc, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise NotJson("a \\u escape is half of a surrogate pair, not a character") from None
    return doc, escapes


def check_document(doc: Any, *, escapes: bool = True) -> None:
    """Raise NotJson unless ``doc`` nests at most ``MAX_DEPTH`` levels and no string or key in
    it holds U+0000. ``escapes=False`` says its text had no ``\\u`` escape, strict JSON's only
    way to write a NUL: the strings are not looked at then."""
    # The depth in one lean pass (0.25 us an event of a 10,000-event batch); the strings in
    # another, only for the rare text that escapes a NUL.
    limit = MAX_DEPTH
    stack: list[tuple[Any, int]] = [(doc, 1)] if type(doc) in (dict, list) else []
    push = stack.append
    while stack:
        node, depth = stack.pop()
        for value in node.values() if type(node) is dict else node:
            kind = type(value)
            if kind is dict or kind is list:
                if depth == limit:
                    raise _too_deep()
                push((value, depth + 1))
    if escapes and _holds_nul(doc):
        raise NotJson("a string holds U+0000 (NUL), which no catalog can store")


def _holds_nul(doc: Any) -> bool:
    stack = [doc]
    while stack:
        node = stack.pop()
        if type(node) is str:
            if "\x00" in node:
                return True
        elif type(node) is dict:
            if any("\x00" in key for key in node):
                return True
            stack.extend(node.values())
        elif type(node) is list:
            stack.extend(node)
    return False


def _too_deep() -> NotJson:
    return NotJson(f"nested too deeply (more than {MAX_DEPTH} levels)")


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
        doc = loads_body(body.decode())  # JSON on the wire is UTF-8 (RFC 8259)
    except _TooDeep:  # the same answer as for 65 levels, wherever the parser's stack ran out
        raise problems.bad_request("bad-json", f"the body is not JSON: {_too_deep()}") from None
    except UnicodeDecodeError as exc:
        raise problems.bad_request("bad-json", f"the body is not UTF-8: {exc}") from None
    except NotJson as exc:
        raise problems.bad_request("bad-json", f"the body is not JSON: {exc}") from None
    return doc
