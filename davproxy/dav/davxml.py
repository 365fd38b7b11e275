"""DAV XML: namespaces, a hardened parser and the few document builders davproxy needs.

All XML goes through here (RFC 4918 §14 elements; namespaces of CalDAV RFC 4791,
CardDAV RFC 6352 and Apple CalendarServer).  Parsing forbids DTDs, entity expansion
and network access, and caps the input size, so hostile bodies fail fast with a
clear error instead of exhausting the process.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from xml.sax.saxutils import escape

from lxml import etree

from davproxy.dav import untrusted

DAV = "DAV:"
CALDAV = "urn:ietf:params:xml:ns:caldav"
CARDDAV = "urn:ietf:params:xml:ns:carddav"
CS = "http://calendarserver.org/ns/"
ICAL = "http://apple.com/ns/ical/"

NSMAP = {"D": DAV, "C": CALDAV, "CR": CARDDAV, "CS": CS, "ICAL": ICAL}

HREF = f"{{{DAV}}}href"
ERROR = f"{{{DAV}}}error"
RESPONSEDESCRIPTION = f"{{{DAV}}}responsedescription"

XML_CONTENT_TYPES = ("application/xml", "text/xml")


class XmlError(ValueError):
    """The body is not a well-formed, acceptable XML document."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        dtd_validation=False,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse(body: bytes) -> etree._Element:
    """Parse a request or response body; refuse DTDs (and so every entity trick)."""
    if not body.strip():
        raise XmlError("empty body")
    try:
        with untrusted.parsing("lxml", "an XML body", expected=(etree.XMLSyntaxError,)):
            root = etree.fromstring(body, _parser())
    except untrusted.Refused as refused:
        error = refused.error
        if isinstance(error, etree.XMLSyntaxError):
            raise XmlError(f"malformed XML: {error.msg}") from None
        raise XmlError(f"unreadable XML ({type(error).__name__})") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise XmlError("DTDs are not accepted")
    return root


def is_xml_content_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in XML_CONTENT_TYPES or media.endswith("+xml")


def serialize(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


def error_document(condition: str | None, message: str = "") -> bytes:
    root = etree.Element(ERROR, nsmap={"D": DAV})
    if condition:
        etree.SubElement(root, condition)
    if message:
        # RFC 4918 leaves room for a human description; DAV:responsedescription reads well.
        etree.SubElement(root, RESPONSEDESCRIPTION).text = message
    return serialize(root)


def map_hrefs(body: bytes, mapper: Callable[[str], str]) -> bytes:
    """Rewrite every ``D:href`` text of a document through ``mapper``.

    Returns the body unchanged (same bytes) when no href changed, so fidelity is kept
    whenever there is nothing to map.
    """
    root = parse(body)
    if not map_tree_hrefs(root, mapper):
        return body
    declaration = body.lstrip().startswith(b"<?xml")
    return etree.tostring(root, xml_declaration=declaration, encoding="utf-8")


def map_tree_hrefs(root: etree._Element, mapper: Callable[[str], str]) -> bool:
    """``map_hrefs`` on a parsed document; whether any href changed."""
    changed = False
    for element in root.iter(HREF):
        text = element.text
        if text is None:
            continue
        stripped = text.strip()
        mapped = mapper(stripped)
        if mapped != stripped:
            element.text = mapped
            changed = True
    return changed


# -- building and editing multistatus documents (RFC 4918 §14.16) ---------------------

MULTISTATUS = f"{{{DAV}}}multistatus"
RESPONSE = f"{{{DAV}}}response"
PROPSTAT = f"{{{DAV}}}propstat"
PROP = f"{{{DAV}}}prop"
STATUS = f"{{{DAV}}}status"


def element(
    tag: str, *children: etree._Element, text: str | None = None, **attrs: str
) -> etree._Element:
    """A detached element with children: the one way davproxy builds XML."""
    node = etree.Element(tag, nsmap=NSMAP if tag.startswith("{") else None, **attrs)
    if text is not None:
        node.text = text
    for child in children:
        node.append(child)
    return node


def href(value: str) -> etree._Element:
    return element(HREF, text=value)


def status_line(code: int) -> etree._Element:
    """``D:status`` with the full status line (RFC 9110 reason phrases, 507 included)."""
    try:
        reason = HTTPStatus(code).phrase
    except ValueError:
        reason = ""
    return element(STATUS, text=f"HTTP/1.1 {code} {reason}".rstrip())


def propstat(code: int, props: list[etree._Element]) -> etree._Element:
    return element(PROPSTAT, element(PROP, *props), status_line(code))


def response(path: str, found: list[etree._Element], missing: list[str] = ()) -> etree._Element:  # type: ignore[assignment]
    node = element(RESPONSE, href(path))
    if found:
        node.append(propstat(200, found))
    if missing:
        node.append(propstat(404, [etree.Element(name) for name in missing]))
    return node


def multistatus(*responses: etree._Element) -> etree._Element:
    return element(MULTISTATUS, *responses)


class Mold:
    """A response rendered once and stamped out for many resources that differ only in
    a few text values (the href, an ETag): a listing of 10,000 members then costs a
    string substitution each instead of a tree.  The model is built by the same code as
    a single answer, with each placeholder where its value goes."""

    __slots__ = ("_pieces", "_slots")

    def __init__(self, model: etree._Element, placeholders: Sequence[str]) -> None:
        text = serialize(multistatus(model)).decode("utf-8")
        # inside the multistatus element, whose start tag declares the namespaces
        inner = text[text.index(">", text.index("?>") + 2) + 1 : text.rindex("</")]
        pattern = "(" + "|".join(re.escape(p) for p in placeholders) + ")"
        pieces = re.split(pattern, inner)
        self._pieces = pieces
        self._slots = [(i, placeholders.index(piece)) for i, piece in enumerate(pieces) if i % 2]

    def stamp(self, *values: str) -> str:
        """The response with each placeholder's value (escaped as XML text)."""
        pieces = self._pieces.copy()
        for index, which in self._slots:
            pieces[index] = escape(values[which])
        return "".join(pieces)


def multistatus_bytes(head: Sequence[etree._Element], stamped: Iterable[str]) -> bytes:
    """A serialized multistatus of ``head`` responses followed by stamped ones."""
    root = multistatus(*head)
    root.append(etree.Comment("stamped"))
    before, after = serialize(root).split(b"<!--stamped-->", 1)
    return before + "".join(stamped).encode("utf-8") + after


def status_response(path: str, code: int) -> etree._Element:
    """A response carrying a status instead of properties (sync deletions, 424s)."""
    return element(RESPONSE, href(path), status_line(code))


PROPFIND = f"{{{DAV}}}propfind"


@dataclass(frozen=True, slots=True)
class PropRequest:
    """What a PROPFIND asks for (RFC 4918 §9.1): named props, allprop(+include), names."""

    mode: str  # "prop" | "allprop" | "propname"
    names: tuple[str, ...] = ()  # requested names ("prop"), or the include list ("allprop")

    def wants(self, name: str) -> bool:
        return self.mode == "propname" or name in self.names

    def wants_any(self, names: frozenset[str]) -> bool:
        return self.mode == "propname" or not names.isdisjoint(self.names)


def parse_propfind(body: bytes) -> PropRequest:
    if not body.strip():
        return PropRequest("allprop")  # RFC 4918 §9.1: an empty body means allprop
    root = parse(body)
    if root.tag != PROPFIND:
        raise XmlError(f"expected DAV:propfind, got {root.tag}")
    for child in root:
        if child.tag == f"{{{DAV}}}prop":
            return PropRequest("prop", tuple(str(p.tag) for p in child if isinstance(p.tag, str)))
        if child.tag == f"{{{DAV}}}propname":
            return PropRequest("propname")
        if child.tag == f"{{{DAV}}}allprop":
            include = root.find(f"{{{DAV}}}include")
            names = tuple(str(p.tag) for p in include) if include is not None else ()
            return PropRequest("allprop", names)
    raise XmlError("DAV:propfind needs prop, allprop or propname")


def href_path(value: str) -> str:
    """The path of an href (absolute URLs are reduced to their path)."""
    value = value.strip()
    if value.startswith("/"):
        return value
    _, sep, rest = value.partition("://")
    if not sep:
        return value
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


class LazyProps(Mapping[str, etree._Element]):
    """Properties whose names are known at once but whose values are built only when
    asked for: a listing of 200 members that asks for none of them builds nothing."""

    __slots__ = ("factories",)

    def __init__(self, factories: dict[str, Callable[[], etree._Element]]) -> None:
        self.factories = factories

    def __getitem__(self, name: str) -> etree._Element:
        return self.factories[name]()  # a fresh element each time: lxml nodes have one parent

    def __iter__(self) -> Iterator[str]:
        return iter(self.factories)

    def __len__(self) -> int:
        return len(self.factories)


def augment(
    body: bytes,
    request: PropRequest,
    provide: Callable[[str], Mapping[str, etree._Element] | None],
    extra: list[etree._Element] | None = None,
    adjust: Callable[[str, etree._Element], bool] | None = None,
) -> bytes:
    """Edit a multistatus: davproxy's own properties replace the upstream's answer.

    ``provide(path)`` gives the properties davproxy owns for that response (or None);
    those the request asked for are removed from the upstream's propstats (typically
    its 404) and answered with 200.  ``extra`` responses are appended (listings);
    ``adjust(path, response)`` may edit a response in place (True when it did).
    """
    root = parse(body)
    changed = bool(extra)
    for node in root.findall(RESPONSE):
        href_text = node.findtext(HREF)
        if adjust is not None and href_text and adjust(href_path(href_text), node):
            changed = True
        owned = provide(href_path(href_text)) if href_text else None
        if not owned:
            continue
        wanted = [name for name in owned if request.wants(name)]
        if not wanted:
            continue
        for stat in node.findall(PROPSTAT):
            prop = stat.find(PROP)
            if prop is None:
                continue
            for child in list(prop):
                if child.tag in wanted:
                    prop.remove(child)
            if len(prop) == 0:
                node.remove(stat)
        props = [
            owned[name] if request.mode != "propname" else etree.Element(name) for name in wanted
        ]
        _graft(node, propstat(200, props))
        changed = True
    if not changed:
        return body  # nothing of ours was asked for: the upstream's bytes, untouched
    for extra_node in extra or ():
        root.append(extra_node)
    return serialize(root)


def _graft(parent: etree._Element, node: etree._Element) -> None:
    """Append a copy of ``node`` that declares no namespace prefix of its own.

    Moving an element into a parsed document makes lxml bind it to the document's
    declaration of its namespace while the element's own declarations stay: when the
    upstream uses ``C`` for another namespace than davproxy's ``NSMAP`` (DAViCal:
    ``xmlns:C="http://calendarserver.org/ns/"``), the result reads as the wrong element.
    Rebuilt element by element, each name takes a prefix in scope, or a fresh one."""
    copy = etree.SubElement(parent, node.tag, attrib=dict(node.attrib))
    copy.text, copy.tail = node.text, node.tail
    for child in node:
        if isinstance(child.tag, str):
            _graft(copy, child)


def answer(
    path: str,
    available: dict[str, etree._Element],
    request: PropRequest,
    hidden_from_allprop: frozenset[str] = frozenset(),
) -> etree._Element:
    """One PROPFIND response for a resource davproxy serves itself."""
    if request.mode == "propname":
        return response(path, [etree.Element(name) for name in available])
    if request.mode == "allprop":
        found = [
            value
            for name, value in available.items()
            if name not in hidden_from_allprop or name in request.names
        ]
        return response(path, found)
    found = [available[name] for name in request.names if name in available]
    missing = [name for name in request.names if name not in available]
    return response(path, found, missing)


def response_status(root: etree._Element) -> int | None:
    """The status a multistatus gives its first resource as a whole (``D:response/D:status``),
    e.g. Xandikos's 404 for a missing collection inside a 207."""
    line = root.findtext(f"{RESPONSE}/{STATUS}")
    if not line:
        return None
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isascii() and parts[1].isdigit() else None


def add_privilege(node: etree._Element, privilege: str) -> bool:
    """Add a privilege to a response's granted ``current-user-privilege-set``."""
    granted = node.find(f"{PROPSTAT}/{PROP}/{{{DAV}}}current-user-privilege-set")
    if granted is None or granted.find(f"{{{DAV}}}privilege/{privilege}") is not None:
        return False
    granted.append(element(f"{{{DAV}}}privilege", element(privilege)))
    return True


def found_prop(node: etree._Element, name: str) -> etree._Element | None:
    """A property a multistatus response answers with 200, or None (absent, or in a
    propstat with another status)."""
    for stat in node.findall(PROPSTAT):
        prop = stat.find(f"{PROP}/{name}")
        if prop is None:
            continue
        words = (stat.findtext(STATUS) or "").split()
        if len(words) > 1 and words[1] == "200":
            return prop
    return None


def resourcetypes(node: etree._Element) -> set[str] | None:
    """The resource types a multistatus response shows (Clark names), or None when its
    resourcetype is not in the answer."""
    found = found_prop(node, f"{{{DAV}}}resourcetype")
    if found is None:
        return None
    return {str(child.tag) for child in found if isinstance(child.tag, str)}


def add_resourcetype(node: etree._Element, marker: str) -> bool:
    """Add a marker (``CS:shared-owner``, ``CS:shared``) to a response's resourcetype."""
    kinds = node.find(f"{PROPSTAT}/{PROP}/{{{DAV}}}resourcetype")
    if kinds is None or kinds.find(marker) is not None:
        return False
    kinds.append(element(marker))
    return True


def privilege_set(*privileges: str) -> etree._Element:
    """``D:current-user-privilege-set`` holding the named DAV: privileges."""
    return element(
        f"{{{DAV}}}current-user-privilege-set",
        *(element(f"{{{DAV}}}privilege", element(f"{{{DAV}}}{p}")) for p in privileges),
    )
