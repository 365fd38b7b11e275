"""The XML documents davproxy produces and parses for sharing, pinned."""

import json

import pytest
from lxml import etree
from yarl import URL

from davproxy.config import AccessConfig, IdentityConfig, Layout, ServerConfig, UpstreamConfig
from davproxy.dav import davxml
from davproxy.dav.errors import DavError
from davproxy.sharing.notifications import Renderer
from davproxy.sharing.requests import parse_share_resource
from davproxy.store.records import Notification
from davproxy.upstream.client import Upstream

NS = {"D": "DAV:", "C": "urn:ietf:params:xml:ns:caldav", "CS": "http://calendarserver.org/ns/"}


def upstream(prefix: str = "/dav/") -> Upstream:
    config = UpstreamConfig(
        name="u", prefix=prefix, url=URL("http://127.0.0.1:5232/"),
        mapping_file=__import__("pathlib").Path("m.toml"), kind="radicale",
        href_mapping="script-name", layout=Layout("{user}/", "{user}/", "{user}/"),
        identity=IdentityConfig("proxy-auth"), access=AccessConfig(),
    )  # fmt: skip
    return Upstream(config, ServerConfig(), session=None)  # type: ignore[arg-type]


def note(type_: str, body: dict, user: str = "bob", name: str = "abc.xml") -> Notification:
    return Notification(1, "u", user, name, type_, json.dumps(body), "e", 1, 0.0)


INVITE = {
    "dtstamp": 1795435200.0, "uid": "abc", "sharer": "alice@corp", "sharee": "bob",
    "sharee_href": "mailto:bob@example.org", "collection": "alice%40corp/work/",
    "kind": "calendar", "access": "read-write", "status": "noresponse",
    "displayname": "Work", "components": ["VEVENT"], "comment": "Team calendar",
}  # fmt: skip


def test_ietf_invite_notification_document() -> None:
    renderer = Renderer(upstream(), lambda user: {"alice@corp": "Alice"}.get(user, user))
    root = etree.fromstring(renderer.ietf(note("share-invite", INVITE)))
    assert root.tag == "{DAV:}notification"
    assert root.findtext("D:dtstamp", namespaces=NS) == "2026-11-23T12:00:00Z"
    invite = root.find("D:share-invite-notification", NS)
    assert [etree.QName(c).localname for c in invite] == [
        "principal", "invite-noresponse", "sharer-resource-uri", "share-access", "prop",
        "reply-url", "comment",
    ]  # fmt: skip
    assert invite.findtext("D:principal/D:href", namespaces=NS) == "/dav/alice@corp/"
    assert invite.findtext("D:principal/D:prop/D:displayname", namespaces=NS) == "Alice"
    assert (
        invite.findtext("D:sharer-resource-uri/D:href", namespaces=NS) == "/dav/alice%40corp/work/"
    )
    assert invite.find("D:share-access/D:read-write", NS) is not None
    assert invite.find("D:prop/D:resourcetype/C:calendar", NS) is not None
    assert invite.findtext("D:reply-url/D:href", namespaces=NS) == (
        "/dav/.davproxy/notifications/bob/abc.xml"
    )


def test_revoked_invite_has_no_reply_url() -> None:
    renderer = Renderer(upstream(), str)
    body = {**INVITE, "access": "no-access", "status": "accepted"}
    root = etree.fromstring(renderer.ietf(note("share-invite", body)))
    assert root.find(".//D:share-access/D:no-access", NS) is not None
    assert root.find(".//D:invite-accepted", NS) is not None
    assert root.find(".//D:reply-url", NS) is None


def test_ietf_reply_notification_document_and_types() -> None:
    renderer = Renderer(upstream("/"), str)
    reply = note(
        "share-reply",
        {"dtstamp": 0, "uid": "abc", "sharee": "bob", "sharee_href": "mailto:bob@example.org",
         "status": "declined", "collection": "alice/work/", "comment": ""},
        user="alice", name="abc-reply.xml",
    )  # fmt: skip
    root = etree.fromstring(renderer.ietf(reply))
    body = root.find("D:share-reply-notification", NS)
    assert body.findtext("D:sharee/D:href", namespaces=NS) == "mailto:bob@example.org"
    assert body.find("D:sharee/D:invite-declined", NS) is not None
    assert body.findtext("D:href", namespaces=NS) == "/alice/work/"
    types = renderer.notification_types("share-invite", "calendar")
    assert types["{DAV:}notificationtype"][0].tag == "{DAV:}share-invite-notification"
    cs = types["{http://calendarserver.org/ns/}notificationtype"][0]
    assert cs.tag == "{http://calendarserver.org/ns/}invite-notification"
    assert cs.get("shared-type") == "calendar" and len(cs) == 0


def share(xml: str) -> etree._Element:
    return davxml.parse(xml.encode())


def test_parse_share_resource() -> None:
    sharees = parse_share_resource(
        share(
            '<D:share-resource xmlns:D="DAV:"><D:sharee><D:href> mailto:bob@example.org </D:href>'
            "<D:prop><D:displayname>Bob</D:displayname></D:prop><D:comment>hi</D:comment>"
            "<D:share-access><D:read/></D:share-access></D:sharee>"
            "<D:sharee><D:href>/carol/</D:href><D:share-access><D:no-access/></D:share-access>"
            "</D:sharee></D:share-resource>"
        )
    )
    assert [(s.href, s.access, s.displayname, s.comment) for s in sharees] == [
        ("mailto:bob@example.org", "read", "Bob", "hi"),
        ("/carol/", "no-access", "", ""),
    ]


@pytest.mark.parametrize(
    "body",
    [
        '<D:share-resource xmlns:D="DAV:"/>',
        '<D:share-resource xmlns:D="DAV:"><D:sharee><D:share-access><D:read/></D:share-access></D:sharee></D:share-resource>',
        '<D:share-resource xmlns:D="DAV:"><D:sharee><D:href>/b/</D:href><D:share-access><D:all/></D:share-access></D:sharee></D:share-resource>',
        '<D:share-resource xmlns:D="DAV:"><D:sharee><D:href>/b/</D:href><D:share-access><D:read/><D:read-write/></D:share-access></D:sharee></D:share-resource>',
        '<D:share-resource xmlns:D="DAV:">'
        + "<D:sharee><D:href>/b/</D:href><D:share-access><D:read/></D:share-access></D:sharee>"
        * 501
        + "</D:share-resource>",
    ],
)
def test_bad_share_resource_is_400(body: str) -> None:
    with pytest.raises(DavError) as error:
        parse_share_resource(share(body))
    assert error.value.status == 400


def test_augment_replaces_404_with_owned_value_and_keeps_untouched_bytes() -> None:
    upstream_answer = (
        b'<?xml version="1.0"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/alice/</D:href>'
        b"<D:propstat><D:prop><D:displayname>A</D:displayname></D:prop><D:status>HTTP/1.1 200 OK"
        b"</D:status></D:propstat><D:propstat><D:prop><D:notification-URL/></D:prop><D:status>"
        b"HTTP/1.1 404 Not Found</D:status></D:propstat></D:response></D:multistatus>"
    )
    wanted = davxml.PropRequest("prop", ("{DAV:}displayname", "{DAV:}notification-URL"))
    owned = {"{DAV:}notification-URL": davxml.element("{DAV:}notification-URL", davxml.href("/n/"))}
    edited = etree.fromstring(
        davxml.augment(upstream_answer, wanted, lambda p: owned if p == "/alice/" else None)
    )
    ok = [
        s
        for s in edited.iterfind(".//D:propstat", NS)
        if "200" in s.findtext("D:status", namespaces=NS)
    ]
    assert edited.findtext(".//D:notification-URL/D:href", namespaces=NS) == "/n/"
    assert not any(
        "404" in s.findtext("D:status", namespaces=NS) for s in edited.iterfind(".//D:propstat", NS)
    )
    assert len(ok) == 2
    other = davxml.PropRequest("prop", ("{DAV:}displayname",))
    assert davxml.augment(upstream_answer, other, lambda p: owned) is upstream_answer
