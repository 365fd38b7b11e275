import pytest
from lxml import etree

from davproxy.dav import davxml


def test_parse_refuses_doctype_and_entities() -> None:
    xxe = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    with pytest.raises(davxml.XmlError):
        davxml.parse(xxe)
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><l>&b;</l>'
    )
    with pytest.raises(davxml.XmlError):
        davxml.parse(bomb)


@pytest.mark.parametrize("body", [b"", b"   ", b"<a><b></a>", b"not xml", b"<a>"])
def test_parse_refuses_malformed(body: bytes) -> None:
    with pytest.raises(davxml.XmlError):
        davxml.parse(body)


def test_error_document_names_condition_and_message() -> None:
    root = davxml.parse(davxml.error_document("{DAV:}need-privileges", "read-only share"))
    assert root.tag == "{DAV:}error"
    assert [child.tag for child in root] == ["{DAV:}need-privileges", "{DAV:}responsedescription"]
    assert root[1].text == "read-only share"


def test_map_hrefs_rewrites_only_hrefs_and_keeps_unchanged_bytes() -> None:
    body = (
        b'<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">'
        b"<D:response><D:href>/up/a/</D:href><D:propstat><D:prop><D:displayname>/up/a/"
        b"</D:displayname></D:prop></D:propstat></D:response></D:multistatus>"
    )
    mapped = davxml.map_hrefs(body, lambda h: h.replace("/up/", "/dav/", 1))
    root = davxml.parse(mapped)
    assert root.find(".//{DAV:}href").text == "/dav/a/"
    assert root.find(".//{DAV:}displayname").text == "/up/a/"  # not an href: untouched
    unchanged = davxml.map_hrefs(body, lambda h: h)
    assert unchanged is body


def test_xml_content_types() -> None:
    assert davxml.is_xml_content_type("text/xml; charset=utf-8")
    assert davxml.is_xml_content_type("application/davsharing+xml")
    assert not davxml.is_xml_content_type("text/calendar")


@pytest.mark.parametrize(
    "propfind",
    [
        b'<D:propfind xmlns:D="DAV:"><D:prop><D:getetag/><D:displayname/></D:prop></D:propfind>',
        b'<D:propfind xmlns:D="DAV:" xmlns:X="urn:x"><D:prop><X:odd/><D:getetag/>'
        b"</D:prop></D:propfind>",
        b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>',
        b'<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>',
    ],
    ids=["prop", "foreign-namespace", "allprop", "propname"],
)
def test_mold_stamps_exactly_what_answer_builds(propfind: bytes) -> None:
    """A listing stamped from a mold is the same XML as one answer per member, values
    that need escaping included."""
    wanted = davxml.parse_propfind(propfind)

    def props(etag: str) -> dict[str, etree._Element]:
        return {
            "{DAV:}getetag": davxml.element("{DAV:}getetag", text=f'"{etag}"'),
            "{DAV:}resourcetype": davxml.element("{DAV:}resourcetype"),
        }

    mold = davxml.Mold(davxml.answer("\ue000h", props("\ue000e"), wanted), ("\ue000h", "\ue000e"))
    members = [("/n/a&b<c>.xml", "e1"), ("/n/plain.xml", "x&y")]
    stamped = davxml.multistatus_bytes([], [mold.stamp(h, e) for h, e in members])
    built = davxml.serialize(
        davxml.multistatus(*(davxml.answer(h, props(e), wanted) for h, e in members))
    )
    assert etree.tostring(etree.fromstring(stamped), method="c14n") == etree.tostring(
        etree.fromstring(built), method="c14n"
    )


def test_augment_keeps_namespaces_when_the_upstream_uses_davproxys_prefixes_otherwise() -> None:
    """DAViCal declares C for CalendarServer's namespace, davproxy's NSMAP for CalDAV's:
    the added property must still read as CS:notification-URL."""
    cs = "http://calendarserver.org/ns/"
    body = (
        b'<multistatus xmlns="DAV:" xmlns:C="http://calendarserver.org/ns/"><response>'
        b"<href>/bob/</href><propstat><prop><C:notification-URL/></prop>"
        b"<status>HTTP/1.1 404 Not Found</status></propstat></response></multistatus>"
    )
    name = f"{{{cs}}}notification-URL"
    owned = davxml.element(name, davxml.href("/.davproxy/notifications/bob/"))
    edited = davxml.augment(body, davxml.PropRequest("prop", (name,)), lambda _: {name: owned})
    root = davxml.parse(edited)
    found = root.find(f".//{{{cs}}}notification-URL/{{DAV:}}href")
    assert found is not None and found.text == "/.davproxy/notifications/bob/"
    assert root.find(".//{urn:ietf:params:xml:ns:caldav}notification-URL") is None
