"""The sharing properties davproxy adds to collections (both flavours from one record).

Owner's collection: ``D:share-access``, ``D:invite``, ``D:share-resource-uri``,
``CS:invite`` (with ``CS:uid``), ``CS:allowed-sharing-modes``.  A sharee's copy: its
sharing state, the sharer (``D:owner``, ``CS:organizer``), ``CS:shared-url``, the
sharee's privileges and their own per-copy values (resource-sharing-04 §5,
caldav-sharing-01 §5, CalendarServer caldav-sharing §5.2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from lxml import etree

from davproxy.dav import davxml
from davproxy.dav.davxml import (
    CALDAV,
    CARDDAV,
    CS,
    DAV,
    ICAL,
    LazyProps,
    element,
    href,
    privilege_set,
)
from davproxy.dav.errors import DavError
from davproxy.dav.paths import canonical
from davproxy.sharing.group_store import GroupShare
from davproxy.store import Store
from davproxy.store.records import Share
from davproxy.upstream.client import Upstream
from davproxy.upstream.directory import Directory

# Properties each sharee keeps for themselves on their copy (caldav-sharing-01 §5,
# CS caldav-sharing §5.2).  Every sharee may write them, read-only ones included.
INSTANCE_PROPS = frozenset(
    {
        f"{{{DAV}}}displayname",
        f"{{{ICAL}}}calendar-color",
        f"{{{ICAL}}}calendar-order",
        f"{{{CALDAV}}}calendar-description",
        f"{{{CALDAV}}}schedule-calendar-transp",
        f"{{{CARDDAV}}}addressbook-description",
    }
)
# What each access level grants on a copy (resource-sharing-04 §5.5 suggestions).
_PRIVILEGES = {
    "read": ("read", "read-current-user-privilege-set", "write-properties"),
    "read-write": (
        "read", "read-current-user-privilege-set", "write-properties", "write",
        "write-content", "bind", "unbind",
    ),
}  # fmt: skip


class SharingProperties:
    def __init__(self, store: Store, upstream: Upstream, directory: Directory) -> None:
        self.store = store
        self.upstream = upstream
        self.directory = directory
        self.name = upstream.name
        # the groups a collection is shared with, and their names (sharing/groups.py)
        self.group_entries: Callable[[str], list[tuple[GroupShare, str]]] = lambda _: []

    def copy_props(self, share: Share) -> LazyProps:
        """Properties of a sharee's copy: its sharing state and the sharee's own values
        (built only when asked for: a home listing of 50 copies asks for few of them)."""
        uri = self._resource_uri(share)
        owner = self.upstream.user_paths(share.owner).principal
        factories: dict[str, Callable[[], etree._Element]] = {
            f"{{{DAV}}}share-access": lambda: element(
                f"{{{DAV}}}share-access", element(f"{{{DAV}}}{share.access}")
            ),
            f"{{{DAV}}}share-resource-uri": lambda: element(
                f"{{{DAV}}}share-resource-uri", href(uri)
            ),
            f"{{{DAV}}}sharer-resource-uri": lambda: element(
                f"{{{DAV}}}sharer-resource-uri", href(uri)
            ),
            f"{{{DAV}}}invite": lambda: self._invite_property(share.collection, share.owner),
            f"{{{DAV}}}current-user-privilege-set": lambda: privilege_set(
                *_PRIVILEGES[share.access]
            ),
            f"{{{DAV}}}owner": lambda: element(f"{{{DAV}}}owner", href(owner)),
            f"{{{CS}}}invite": lambda: self._cs_invite_property(
                share.collection, share.owner, False
            ),
            f"{{{CS}}}shared-url": lambda: element(f"{{{CS}}}shared-url", href(uri)),
        }
        factories.update(self.member_props(share).factories)
        for name, value in self.store.instance_props(share.id).items():
            factories[name] = functools.partial(element_from, name, value)
        return LazyProps(factories)

    def member_props(self, share: Share) -> LazyProps:
        principal = self.upstream.user_paths(share.sharee).principal
        return LazyProps(
            {
                f"{{{DAV}}}current-user-privilege-set": lambda: privilege_set(
                    *_PRIVILEGES[share.access]
                ),
                # the upstream answered as the owner; the client is the sharee
                f"{{{DAV}}}current-user-principal": lambda: element(
                    f"{{{DAV}}}current-user-principal", href(principal)
                ),
            }
        )

    def owner_props(self, rest: str) -> dict[str, etree._Element] | None:
        """Properties of a collection its owner can share: ``D:invite`` always (empty
        when nobody is, or is no longer, invited), the rest as the sharing state is."""
        rest = canonical(rest)
        shares = self.store.shares_of_collection(self.name, rest)
        groups = self.group_entries(rest)
        modes = element(f"{{{CS}}}allowed-sharing-modes", element(f"{{{CS}}}can-be-shared"))
        if not shares and not groups:
            return {
                f"{{{DAV}}}share-access": element(
                    f"{{{DAV}}}share-access", element(f"{{{DAV}}}not-shared")
                ),
                f"{{{DAV}}}invite": element(f"{{{DAV}}}invite"),
                f"{{{CS}}}allowed-sharing-modes": modes,
                SUPPORTED_PRIVILEGES: supported_privilege_set(),
            }
        owner = shares[0].owner if shares else groups[0][0].owner
        return {
            SUPPORTED_PRIVILEGES: supported_privilege_set(),
            f"{{{CS}}}allowed-sharing-modes": modes,
            f"{{{CS}}}invite": self._cs_invite_property(rest, owner, True),
            f"{{{DAV}}}share-access": element(
                f"{{{DAV}}}share-access", element(f"{{{DAV}}}shared-owner")
            ),
            f"{{{DAV}}}invite": self._invite_property(rest, owner, sharer=False),
            f"{{{DAV}}}share-resource-uri": element(
                f"{{{DAV}}}share-resource-uri", href(self.upstream.paths.public + rest)
            ),
        }

    def _cs_invite_property(self, collection: str, owner: str, with_uid: bool) -> etree._Element:
        """``CS:invite``: the organizer (on copies) and one ``CS:user`` per sharee."""
        node = element(f"{{{CS}}}invite")
        if not with_uid:
            node.append(
                element(
                    f"{{{CS}}}organizer",
                    href(self.upstream.user_paths(owner).principal),
                    element(f"{{{CS}}}common-name", text=self.directory.display_name(owner)),
                )
            )
        for group, group_name in self.group_entries(collection):  # groups first, as CCS
            node.append(
                _cs_user(
                    f"group:{group.group_id}" if with_uid else None,
                    group.href, group_name, "accepted", group.access, group.comment,
                )
            )  # fmt: skip
        for share in self.store.shares_of_collection(self.name, collection):
            name = share.sharee_name or (
                self.directory.display_name(share.sharee) if share.status != "invalid" else ""
            )
            node.append(
                _cs_user(
                    share.invite_uid if with_uid else None,
                    share.sharee_href, name, share.status, share.access, share.comment,
                )
            )  # fmt: skip
        return node

    def _resource_uri(self, share: Share) -> str:
        return self.upstream.paths.public + share.collection

    def _invite_property(self, collection: str, owner: str, sharer: bool = True) -> etree._Element:
        """``D:invite`` (resource-sharing-04 §4.4.2, §5.5: ``sharee*``); on a sharee's
        copy the sharer comes first as ``D:principal`` (the draft's SHOULD)."""
        node = element(f"{{{DAV}}}invite")
        if sharer:
            node.append(
                element(
                    f"{{{DAV}}}principal",
                    href(self.upstream.user_paths(owner).principal),
                    element(f"{{{DAV}}}share-access", element(f"{{{DAV}}}shared-owner")),
                    element(
                        davxml.PROP,
                        element(f"{{{DAV}}}displayname", text=self.directory.display_name(owner)),
                    ),
                )
            )
        for group, group_name in self.group_entries(collection):
            node.append(
                element(
                    f"{{{DAV}}}sharee",
                    href(group.href),
                    element(f"{{{DAV}}}invite-accepted"),
                    element(f"{{{DAV}}}share-access", element(f"{{{DAV}}}{group.access}")),
                    element(davxml.PROP, element(f"{{{DAV}}}displayname", text=group_name)),
                )
            )
        for share in self.store.shares_of_collection(self.name, collection):
            sharee = element(
                f"{{{DAV}}}sharee",
                href(share.sharee_href),
                element(f"{{{DAV}}}invite-{share.status}"),
                element(f"{{{DAV}}}share-access", element(f"{{{DAV}}}{share.access}")),
            )
            name = share.sharee_name or (
                self.directory.display_name(share.sharee) if share.status != "invalid" else ""
            )
            if name:
                sharee.append(element(davxml.PROP, element(f"{{{DAV}}}displayname", text=name)))
            node.append(sharee)
        return node

    def set_instance_props(self, share: Share, body: bytes) -> etree._Element:
        """PROPPATCH on a copy: per-sharee properties only, for every access level."""
        root = davxml.parse(body)
        if root.tag != f"{{{DAV}}}propertyupdate":
            raise DavError(400, None, "expected DAV:propertyupdate")
        changes: list[tuple[str, str | None]] = []
        refused: list[str] = []
        for action in root:
            if action.tag not in (f"{{{DAV}}}set", f"{{{DAV}}}remove"):
                continue
            for prop in action.iterfind(f"{{{DAV}}}prop/*"):
                name = str(prop.tag)
                if name not in INSTANCE_PROPS:
                    refused.append(name)
                elif action.tag == f"{{{DAV}}}set":
                    changes.append((name, inner_xml(prop)))
                else:
                    changes.append((name, None))
        path = self.upstream.paths.public + (share.mount or "")
        if refused:  # all or nothing (RFC 4918 §9.2): the rest fail with 424
            node = element(davxml.RESPONSE, href(path))
            node.append(davxml.propstat(403, [etree.Element(n) for n in refused]))
            if changes:
                node.append(davxml.propstat(424, [etree.Element(n) for n, _ in changes]))
            return davxml.multistatus(node)
        with self.store.transaction():
            if not self.store.share_is_current(share):  # revoked while this was on its way
                raise DavError(404, None, "this shared copy no longer exists")
            for name, value in changes:
                self.store.set_instance_prop(share.id, name, value)
        return davxml.multistatus(davxml.response(path, [etree.Element(n) for n, _ in changes]))

    def shared_marker(self, role: str | None, rest: str) -> str | None:
        """The CS resourcetype marker for a path in the given ``role``: ``CS:shared-owner``
        on a collection its owner shares, ``CS:shared`` on a sharee's copy."""
        if role == "copy":
            return f"{{{CS}}}shared"
        if role == "owned" and (
            self.store.shares_of_collection(self.name, canonical(rest))
            or self.group_entries(canonical(rest))
        ):
            return f"{{{CS}}}shared-owner"
        return None


def _cs_user(
    uid: str | None, target: str, name: str, status: str, access: str, comment: str
) -> etree._Element:
    """One ``CS:user`` of ``CS:invite`` (``CS:uid`` on the owner's collection only)."""
    user = element(f"{{{CS}}}user")
    if uid is not None:
        user.append(element(f"{{{CS}}}uid", text=uid))
    user.extend(
        [
            href(target),
            element(f"{{{CS}}}common-name", text=name),
            element(f"{{{CS}}}invite-{status}"),
            element(f"{{{CS}}}access", element(f"{{{CS}}}{access}")),
        ]
    )
    if comment:
        user.append(element(f"{{{CS}}}summary", text=comment))
    return user


SUPPORTED_PRIVILEGES = f"{{{DAV}}}supported-privilege-set"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def supported_privilege(name: str, description: str, *inner: etree._Element) -> etree._Element:
    """One ``D:supported-privilege`` (RFC 3744 §5.3): the privilege, its description,
    the privileges it aggregates."""
    return element(
        f"{{{DAV}}}supported-privilege",
        element(f"{{{DAV}}}privilege", element(name)),
        element(f"{{{DAV}}}description", text=description, **{_XML_LANG: "en"}),
        *inner,
    )


def supported_share() -> etree._Element:
    """``D:share`` as a supported privilege (resource-sharing-04 §4.2: MUST be listed in
    ``D:supported-privilege-set`` on resources that can be shared)."""
    return supported_privilege(f"{{{DAV}}}share", "Share this collection with others")


def supported_privilege_set() -> etree._Element:
    """The privileges of a collection its owner can share, for upstreams that list none
    (Radicale and Xandikos answer 404): what their privilege sets grant, and D:share."""
    return element(
        SUPPORTED_PRIVILEGES,
        supported_privilege(
            f"{{{DAV}}}all",
            "Any operation",
            supported_privilege(f"{{{DAV}}}read", "Read any object"),
            supported_privilege(
                f"{{{DAV}}}read-current-user-privilege-set", "Read your own privileges"
            ),
            supported_privilege(
                f"{{{DAV}}}write",
                "Write any object",
                supported_privilege(f"{{{DAV}}}write-properties", "Write properties"),
                supported_privilege(f"{{{DAV}}}write-content", "Write resource content"),
                supported_privilege(f"{{{DAV}}}bind", "Add resources to a collection"),
                supported_privilege(f"{{{DAV}}}unbind", "Remove resources from a collection"),
            ),
            supported_share(),
        ),
    )


def copy_name(collection_name: str, owner_name: str) -> str:
    """The display name an accepted copy starts with when the sharee chose none: the
    owner's name added, so Bob's own "Calendar" and his copy of Alice's stay apart."""
    return f"{collection_name} ({owner_name})"


def inner_xml(prop: etree._Element) -> str:
    """A property value kept as XML text, so structured values survive."""
    return etree.tostring(prop, encoding="unicode")


def element_from(name: str, value: str) -> etree._Element:
    if not value.lstrip().startswith("<"):
        return element(name, text=value)  # plain text (a display name, a colour)
    try:
        node = davxml.parse(value.encode())
        if node.tag == name:
            return node
    except davxml.XmlError:
        pass
    return element(name, text=value)
