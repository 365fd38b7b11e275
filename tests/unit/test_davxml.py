import pytest

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
