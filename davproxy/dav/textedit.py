"""Editing a multistatus answer (RFC 4918 §14.16) on its text, without walking a tree.

The rewrite outcome maps every ``D:href`` of an answer and edits a few property values
of each response (a sharee's ETags, ``sharing/peruser_view.py``).  On an lxml tree,
touching each element from Python costs several times what parsing and writing the
whole document cost.  Where the edit of a property does not depend on the response it
is in (a sharee's ETag where nobody has per-user data) and every href maps by one
prefix, it is done here on the text: the hrefs' prefix replaced by one regular
expression with a constant, each edited property's text by its function, everything
else copied as it came.  The result means what the tree edit's result means (the same
elements, the same texts): ``tests/unit/test_textedit.py`` checks it against the tree
path on generated documents.

Only a plain subset is edited this way, checked on the tree the caller has parsed
(with the hardened parser: the text is well-formed) by one XPath in C: a
``D:multistatus`` whose responses each begin with their one ``D:href``, no other
``D:href`` anywhere, no response-level ``D:status``, every edited property a
``response/propstat/prop/*``, at most one sync token; and on the text: UTF-8, every
namespace declared on the root element, no comments, CDATA sections, doctype,
processing instructions or character references, every href the prefix and a plain
member name, every edited property text only.  Anything else raises ``Unsupported``,
and the caller edits the tree.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping

from lxml import etree

DAV = "DAV:"
_HREF = f"{{{DAV}}}href"
_SYNC_TOKEN = f"{{{DAV}}}sync-token"
_ROOT_TAG = re.compile(r"""<([^\s/>]+)((?:[^>"']|"[^"]*"|'[^']*')*?)(/?)>""")
_ATTRIBUTE = re.compile(r"""([^\s=]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_DECLARATION = re.compile(r"""<\?xml\s[^?]*\?>""")
_ENCODING = re.compile(r"""encoding\s*=\s*["']([^"']*)["']""")
_REFERENCE = re.compile(r"&(#[0-9]+|#x[0-9a-fA-F]+|lt|gt|amp|quot|apos);")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
# attributes of an element (quoted values may hold '>', never '<')
_ATTRIBUTES = r"""(?:\s+[^\s=/>]+\s*=\s*(?:"[^"]*"|'[^']*'))*\s*"""


class Unsupported(Exception):
    """The document is outside the subset read here: edit its tree instead."""


def unescape(text: str) -> str:
    """Character data as a parser reports it: line ends normalised (XML 1.0 §2.11),
    references replaced."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "&" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name[0] != "#":
            return _NAMED[name]
        return chr(int(name[2:], 16) if name[1] == "x" else int(name[1:]))

    plain = _REFERENCE.sub(one, text)
    if "&" in _REFERENCE.sub("", text):
        raise Unsupported("an entity reference")  # never in a document the parser took
    return plain


def escape(text: str) -> str:
    """Character data as lxml writes it: a CR stays a CR (not a line end to normalise)."""
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def edit(
    root: etree._Element,
    body: bytes,
    old: str,
    new: str,
    edits: Mapping[str, Callable[[str], str]],
    token: Callable[[str], str] | None = None,
) -> bytes:
    """``body`` (whose parsed tree is ``root``) with each response's ``D:href``
    ``old`` + *name* written ``new`` + *name*, each property named in ``edits``
    replaced by its function of the text, and the text of the root's
    ``D:sync-token`` by ``token`` of it (stripped).

    Every response's href must be ``old`` followed by a plain member name (no ``/``,
    ``%``, ``&`` or space: the caller has checked that its own mapping of such an href
    is this one); raises ``Unsupported`` for anything else (see the module's
    docstring)."""
    text = _text(body)
    start = _prolog_end(text)
    first = _ROOT_TAG.search(text, start)
    if first is None:
        raise Unsupported("no root element")
    namespaces = _declared(first.group(2))
    if text.count("xmlns") != first.group(0).count("xmlns"):
        raise Unsupported("a namespace declared below the root (or 'xmlns' in a text)")
    responses = _responses(root, frozenset(edits), token is not None)
    body_text = text[start:]
    hrefs = _names(_HREF, namespaces)
    if len(hrefs) == 1:
        # the prefix right after an href's start tag without attributes (any other
        # href is not counted, so is refused), replaced by a constant: no callback
        start_tag = f"<{hrefs[0]}>"
        pattern = re.compile(f"{re.escape(start_tag + old)}(?=[^<>&%/\\s]+</)")
        replacement = (start_tag + escape(new)).replace("\\", "\\\\")
        body_text, mapped = pattern.subn(replacement, body_text)
    else:
        mapped = 0
    if mapped != responses:
        raise Unsupported("an href that is not a plain member of the collection")
    wanted = dict(edits)
    if token is not None:
        wanted[_SYNC_TOKEN] = lambda value: token(value.strip())
    for clark, change in wanted.items():
        names = _names(clark, namespaces)
        if names:
            body_text = _pattern(names, "([^<]*)").sub(_replacing(change), body_text)
    return (text[:start] + body_text).encode("utf-8")


# A member name whose every spelling is this one: RFC 3986 unreserved characters only
# (never percent-encoded differently, never a path separator); not '.' or '..'.
_PLAIN_MEMBER = r"(?!\.\.?</)[A-Za-z0-9._~-]+"


def map_prefix(root: etree._Element, body: bytes, old: str, new: str) -> bytes:
    """``body`` (whose parsed tree is ``root``: a request body the XML gate took) with
    each ``D:href`` written ``old`` + *name* written ``new`` + *name* instead, and
    nothing else changed.  Every href must be exactly that, with *name* made of RFC 3986
    unreserved characters (the caller has checked that its own mapping of such an href
    is this one); raises ``Unsupported`` for anything else (then the tree is mapped)."""
    text = _text(body)
    start = _prolog_end(text)
    first = _ROOT_TAG.search(text, start)
    if first is None:
        raise Unsupported("no root element")
    if text.count("xmlns") != first.group(0).count("xmlns"):
        raise Unsupported("a namespace declared below the root (or 'xmlns' in a text)")
    if escape(old) != old:
        raise Unsupported("a prefix written with references")
    body_text = text[start:]
    mapped = 0
    for name in _names(_HREF, _declared(first.group(2))):
        tag = re.escape(name)
        # every '<' starts a tag (no comments, CDATA or PIs): these are all the hrefs
        found = len(re.findall(f"<{tag}[\\s/>]", body_text))
        # the prefix of each, replaced by a constant (no callback, no group to expand)
        pattern = re.compile(f"<{tag}>{re.escape(old)}(?={_PLAIN_MEMBER}</{tag}>)")
        replacement = f"<{name}>{escape(new)}".replace("\\", "\\\\")
        body_text, count = pattern.subn(replacement, body_text)
        if count != found:
            raise Unsupported("an href that is not a plain member under the prefix")
        mapped += count
    counter: etree.XPath | None = _checks.__dict__.get("hrefs")
    if counter is None:  # (counted in C: a Python loop over the hrefs cost 50 us)
        counter = _checks.__dict__["hrefs"] = etree.XPath("count(//d:href)", namespaces={"d": DAV})
    if mapped != counter(root):
        raise Unsupported("an href the text does not show as such")
    return (text[:start] + body_text).encode("utf-8")


def _names(clark: str, namespaces: Mapping[str, str]) -> list[str]:
    """The qualified names ``clark`` is written as in the document."""
    uri, _, local = clark[1:].partition("}")
    return [f"{prefix}:{local}" if prefix else local for prefix, bound in namespaces.items()
            if bound == uri]  # fmt: skip


def _pattern(names: list[str], content: str, end: str = "</|<") -> re.Pattern[str]:
    """An element of one of ``names``: (start tag, content, then ``end``: by default
    its end tag's '</' or the '<' of a child)."""
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return re.compile(f"(<(?:{alternatives}){_ATTRIBUTES}>){content}({end})")


def _replacing(change: Callable[[str], str]) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        opening, content, closing = match.groups()
        if closing == "<":
            raise Unsupported("an edited property holding elements")
        value = unescape(content)
        return opening + escape(change(value)) + closing if value else match.group(0)

    return replace


def _text(body: bytes) -> str:
    """The document as text, if it is UTF-8 with nothing but elements and text."""
    if body.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise Unsupported("a byte order mark")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Unsupported("not UTF-8") from None
    if "<!" in text or "<?" in text[_prolog_end(text) :]:
        raise Unsupported("comments, CDATA, a doctype or processing instructions")
    if "&#" in text:
        raise Unsupported("character references")  # so texts can be searched as written
    return text


def _prolog_end(text: str) -> int:
    """Where the XML declaration (if any) ends; it must declare UTF-8 or nothing."""
    found = _DECLARATION.match(text)
    if found is None:
        return 0
    encoding = _ENCODING.search(found.group(0))
    if encoding is not None and encoding.group(1).lower() not in ("utf-8", "utf8"):
        raise Unsupported("declared in another encoding")
    return found.end()


def _declared(attributes: str) -> dict[str, str]:
    """Prefix ('' for the default) -> namespace, as the root element declares them."""
    namespaces: dict[str, str] = {}
    for name, double, single in _ATTRIBUTE.findall(attributes):
        value = unescape(double or single)
        if name == "xmlns":
            namespaces[""] = value
        elif name.startswith("xmlns:"):
            namespaces[name[6:]] = value
    return namespaces


_checks = threading.local()  # compiled XPath objects are not shared between threads


def _responses(root: etree._Element, edited: frozenset[str], token: bool) -> int:
    """How many responses the parsed document has, if it has the shape the text edit
    relies on: every ``D:href`` the first child of a response, one per response, no
    response-level status, every edited property a ``response/propstat/prop/*``, at
    most one sync token, the root's child (else ``Unsupported``)."""
    key = (edited, token)
    cache: dict[tuple[frozenset[str], bool], etree.XPath] = _checks.__dict__.setdefault("cache", {})
    check = cache.get(key)
    if check is None:
        uris = {DAV: "d"}
        for name in sorted(edited):
            uris.setdefault(name[1:].partition("}")[0], f"n{len(uris)}")

        def qname(clark: str) -> str:
            uri, _, local = clark[1:].partition("}")
            return f"{uris[uri]}:{local}"

        response = "/d:multistatus/d:response"
        rules = [
            "/d:multistatus",
            f"count(//d:href) = count({response})",
            f"count({response}/*[1][self::d:href]) = count({response})",
            f"not({response}/d:status)",
        ]
        for name in sorted(edited):
            q = qname(name)
            rules.append(f"count(//{q}) = count({response}/d:propstat/d:prop/{q})")
        if token:
            rules.append("count(//d:sync-token) = count(/d:multistatus/d:sync-token)")
            rules.append("count(//d:sync-token) < 2")
        expression = f"boolean({' and '.join(rules)}) * (1 + count({response}))"
        namespaces = {prefix: uri for uri, prefix in uris.items()}
        check = cache[key] = etree.XPath(expression, namespaces=namespaces)
    found = check(root)
    assert isinstance(found, float)
    if not found:
        raise Unsupported("not a plain multistatus")
    return int(found) - 1
