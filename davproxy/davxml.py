"""DAV XML: namespaces, a hardened parser and the few document builders davproxy needs.

All XML goes through here (RFC 4918 §14 elements; namespaces of CalDAV RFC 4791,
CardDAV RFC 6352 and Apple CalendarServer).  Parsing forbids DTDs, entity expansion
and network access, and caps the input size, so hostile bodies fail fast with a
clear error instead of exhausting the process.
"""

from __future__ import annotations

from collections.abc import Callable

from lxml import etree

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
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise XmlError(f"malformed XML: {exc.msg}") from None
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
    if not changed:
        return body
    declaration = body.lstrip().startswith(b"<?xml")
    return etree.tostring(root, xml_declaration=declaration, encoding="utf-8")
