"""Entity tags and the two conditionals a blob GET honours: If-None-Match and If-Range."""

from __future__ import annotations

import re
from collections.abc import Collection

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE ; etagc may itself contain commas, so a list is
# tokenised by quoted strings rather than split on commas.
_ETAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')


def strong_etag(opaque: str) -> str:
    return f'"{opaque}"'


def parse_etag_list(header: str) -> list[tuple[bool, str]] | None:
    """``[(weak, opaque), ...]`` or None when the header is not a valid list of entity tags."""
    tags: list[tuple[bool, str]] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        if text[pos] in ", \t":
            pos += 1
            continue
        m = _ETAG.match(text, pos)
        if m is None:
            return None
        tags.append((m.group(1) is not None, m.group(2)))
        pos = m.end()
    return tags


def none_match(header: str, opaque: str) -> bool:
    """True when If-None-Match matches (weak comparison), i.e. the answer is 304."""
    if header.strip() == "*":
        return True
    tags = parse_etag_list(header)
    return tags is not None and any(tag == opaque for _weak, tag in tags)


def if_range_allows(header: str, opaque: str) -> bool:
    """True when the Range may be honoured: If-Range names our tag under strong comparison.

    A date never matches: blobs carry no Last-Modified, so RFC 9110 has clients send the tag.
    """
    tags = parse_etag_list(header)
    return tags is not None and len(tags) == 1 and tags[0] == (False, opaque)


def match(header: str, opaques: Collection[str]) -> bool:
    """True when If-Match holds (RFC 9110 13.1.1): ``*``, or a tag that is one of ``opaques``
    under strong comparison (a weak tag never matches). A malformed header matches nothing, so
    a client that meant to guard a write is never let through by a typo."""
    if header.strip() == "*":
        return True
    tags = parse_etag_list(header)
    return tags is not None and any(not weak and tag in opaques for weak, tag in tags)
