"""The acl access backend's pure parts: its configuration and the RFC 3744 documents it
reads and writes (the behaviour against a real server: tests/integration/test_davical_acl.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from davproxy import config
from davproxy.access.acl_document import (
    AUTHENTICATED,
    SHARE_PRIVILEGES,
    acl_body,
    expanded,
    grant_ace,
    parse_acl,
    principal_key,
    refusal,
)
from tests.unit.test_config import write

D = "{DAV:}"

# DAViCal 1.1.12's answer, abridged: owner, one sharee (encoded), authenticated.
ANSWER = b"""<?xml version="1.0" encoding="utf-8" ?>
<multistatus xmlns="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><response>
<href>/caldav.php/alice/w/</href><propstat><prop><acl>
<ace><principal><property><owner/></property></principal>
 <grant><privilege><all/></privilege><privilege><read/></privilege></grant></ace>
<ace><principal><href>http://127.0.0.1:8/caldav.php/dave%40corp/</href></principal>
 <grant><privilege><read/></privilege><privilege><write/></privilege></grant></ace>
<ace><principal><href>/caldav.php/bob/</href></principal><grant/><protected/></ace>
<ace><principal><authenticated/></principal>
 <grant><privilege><C:read-free-busy/></privilege></grant></ace>
</acl></prop><status>HTTP/1.1 200 OK</status></propstat></response></multistatus>"""


def test_acl_property_is_read_as_aces() -> None:
    aces = parse_acl(ANSWER)
    assert aces is not None
    by = {ace.principal: ace for ace in aces}
    assert set(by) == {f"{D}property", "/caldav.php/dave@corp/", "/caldav.php/bob/", AUTHENTICATED}
    dave = by["/caldav.php/dave@corp/"]
    assert dave.by_href and dave.grant and dave.privileges == {f"{D}read", f"{D}write"}
    # an aggregate counts as what it holds
    assert f"{D}write-content" in expanded(dave.privileges)
    assert by["/caldav.php/bob/"].privileges == frozenset() and by["/caldav.php/bob/"].protected
    assert by[AUTHENTICATED].privileges == {"{urn:ietf:params:xml:ns:caldav}read-free-busy"}


@pytest.mark.parametrize(
    "body",
    [
        b"not xml",
        b'<multistatus xmlns="DAV:"><response><href>/x/</href><propstat><prop><acl/></prop>'
        b"<status>HTTP/1.1 403 Forbidden</status></propstat></response></multistatus>",
    ],
)
def test_no_readable_acl_is_none(body: bytes) -> None:
    assert parse_acl(body) is None


def test_acl_body_names_one_principal_per_ace() -> None:
    body = acl_body([grant_ace("/caldav.php/bob/", SHARE_PRIVILEGES["read"]),
                     grant_ace("/caldav.php/carol/", ())])  # fmt: skip
    root = etree.fromstring(body)
    assert root.tag == f"{D}acl"
    aces = root.findall(f"{D}ace")
    assert [a.findtext(f"{D}principal/{D}href") for a in aces] == [
        "/caldav.php/bob/",
        "/caldav.php/carol/",
    ]
    granted = {etree.QName(p[0]).localname for p in aces[0].iter(f"{D}privilege")}
    assert granted == {"read", "read-current-user-privilege-set", "read-free-busy"}
    assert aces[1].find(f"{D}grant") is not None and len(aces[1].find(f"{D}grant")) == 0
    # read-write never lets a sharee rename the owner's collection
    assert f"{D}write-properties" not in SHARE_PRIVILEGES["read-write"]
    assert f"{D}write-content" in SHARE_PRIVILEGES["read-write"]


def test_refusals_name_the_precondition() -> None:
    need = (
        b'<?xml version="1.0"?><error xmlns="DAV:"><need-privileges><resource><href>/a/</href>'
        b"<privilege><write-acl/></privilege></resource></need-privileges></error>"
    )
    assert refusal(need).startswith("need-privileges")
    text = b'<error xmlns="DAV:"><allowed-principal/>May not set privileges</error>'
    assert refusal(text) == "allowed-principal: May not set privileges"
    assert refusal(b"Exception [0] Call to a member function") == ""
    # hrefs compare in one form, however the server encoded them
    assert principal_key("/caldav.php/a%20b//") == principal_key("http://h/caldav.php/a b/")


def test_davical_preset(tmp_path: Path) -> None:
    mapping = 'kind = "davical"\n[identity]\nmode = "proxy-auth"\nhtpasswd = "h"\n'
    (tmp_path / "h").write_text("")
    mapping += '[access]\nbackend = "acl"\n'
    up = config.load(write(tmp_path, 'url = "http://127.0.0.1:80/caldav.php/"', mapping)).upstreams[
        0
    ]
    assert up.layout == config.Layout("{user}/", "{user}/", "{user}/")
    assert up.href_mapping == "rewrite"  # public / <-> /caldav.php/
    assert up.access.backend == "acl" and up.access.acl_request == "own-aces"
    assert up.access.foreign_homes == "refuse"


def test_acl_request_defaults_to_whole_acls_elsewhere(tmp_path: Path) -> None:
    mapping = (
        'kind = "xandikos"\n[identity]\nmode = "upstream-basic"\n[access]\nbackend = "acl"\n'
        'service_user = "svc"\nservice_password_file = "pw"\n'
    )
    (tmp_path / "pw").write_text("secret\n")
    up = config.load(write(tmp_path, 'url = "http://h/"', mapping)).upstreams[0]
    assert up.access.acl_request == "whole"


def test_acl_in_upstream_basic_needs_a_service_account(tmp_path: Path) -> None:
    mapping = 'kind = "davical"\n[identity]\nmode = "upstream-basic"\n[access]\nbackend = "acl"\n'
    with pytest.raises(config.ConfigError, match="service_user"):
        config.load(write(tmp_path, 'url = "http://h/caldav.php/"', mapping))
