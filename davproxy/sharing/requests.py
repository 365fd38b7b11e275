"""Share requests as clients send them: IETF ``D:share-resource`` and Apple ``CS:share``.

Parsing only (draft-pot-webdav-resource-sharing-04 §4.4, CalendarServer caldav-sharing
§5.3.1): documents in, sharee requests out, or the error a client should see.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from davproxy.dav import davxml
from davproxy.dav.davxml import CS, DAV
from davproxy.dav.errors import DavError

SHARE_RESOURCE = f"{{{DAV}}}share-resource"
INVITE_REPLY = f"{{{DAV}}}invite-reply"
CS_SHARE = f"{{{CS}}}share"
CS_INVITE_REPLY = f"{{{CS}}}invite-reply"
# Error conditions of Apple's CalendarServer (caldavtester expects them).
VALID_REQUEST = f"{{{CS}}}valid-request"
INVALID_SHARE = f"{{{CS}}}invalid-share"
MAX_SHAREES = 500
_ACCESS = {"read", "read-write", "no-access"}


@dataclass(frozen=True, slots=True)
class ShareeRequest:
    href: str
    access: str
    comment: str
    displayname: str


def parse_share_resource(root: etree._Element) -> list[ShareeRequest]:
    """``D:share-resource`` -> sharees; a 400 naming what is wrong otherwise."""
    sharees = root.findall(f"{{{DAV}}}sharee")
    if not sharees:
        raise DavError(400, None, "DAV:share-resource needs at least one DAV:sharee")
    if len(sharees) > MAX_SHAREES:
        raise DavError(400, None, f"at most {MAX_SHAREES} sharees per request")
    result = []
    for node in sharees:
        target = (node.findtext(davxml.HREF) or "").strip()
        access_node = node.find(f"{{{DAV}}}share-access")
        access = [
            etree.QName(child).localname
            for child in (access_node if access_node is not None else [])
            if isinstance(child.tag, str) and etree.QName(child).namespace == DAV
        ]
        if not target or len(target) > 2048:
            raise DavError(400, None, "each DAV:sharee needs one DAV:href (at most 2048 chars)")
        if len(access) != 1 or access[0] not in _ACCESS:
            raise DavError(
                400, None, "each DAV:sharee needs DAV:share-access: read, read-write or no-access"
            )
        result.append(
            ShareeRequest(
                href=target,
                access=access[0],
                comment=(node.findtext(f"{{{DAV}}}comment") or "")[:4096],
                displayname=(node.findtext(f"{{{DAV}}}prop/{{{DAV}}}displayname") or "")[:512],
            )
        )
    return result


def parse_cs_share(root: etree._Element) -> list[ShareeRequest]:
    """``CS:share`` -> sharees (removes first, so a href in both sets wins: an update);
    403 ``CS:valid-request`` for anything incomplete."""
    removes, sets = [], []
    for node in root:
        if node.tag not in (f"{{{CS}}}set", f"{{{CS}}}remove"):
            continue
        target = (node.findtext(davxml.HREF) or "").strip()
        if not target or len(target) > 2048:
            raise DavError(403, VALID_REQUEST, "each CS:set and CS:remove needs one D:href")
        if node.tag == f"{{{CS}}}remove":
            removes.append(ShareeRequest(target, "no-access", "", ""))
            continue
        if node.find(f"{{{CS}}}read-write") is not None:
            access = "read-write"
        elif (
            node.find(f"{{{CS}}}read") is not None
            or node.find(f"{{{CS}}}read-write-schedule") is not None
        ):
            access = "read" if node.find(f"{{{CS}}}read") is not None else "read-write"
        else:
            raise DavError(403, VALID_REQUEST, "each CS:set needs CS:read or CS:read-write")
        sets.append(
            ShareeRequest(
                href=target,
                access=access,
                comment=(node.findtext(f"{{{CS}}}summary") or "")[:4096],
                displayname=(node.findtext(f"{{{CS}}}common-name") or "")[:512],
            )
        )
    if not sets and not removes:
        raise DavError(403, VALID_REQUEST, "CS:share needs at least one CS:set or CS:remove")
    if len(sets) + len(removes) > MAX_SHAREES:
        raise DavError(403, VALID_REQUEST, f"at most {MAX_SHAREES} sharees per request")
    return removes + sets
