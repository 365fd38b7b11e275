"""WebDAV ACL documents (RFC 3744 §5.5, §8.1) as the ``acl`` access backend reads and writes them.

Reading: the ``DAV:acl`` property of one collection, as :class:`Ace` values (principal,
granted privileges, protected / inherited flags, the element itself to send back
unchanged).  Writing: an ``ACL`` request body from ACEs, and the DAV precondition an
``ACL`` answer names when the upstream refuses one (``need-privileges``,
``no-ace-conflict``, ``allowed-principal``, ...).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from lxml import etree

from davproxy.dav import davxml
from davproxy.dav.davxml import CALDAV, DAV
from davproxy.dav.paths import canonical

ACL = f"{{{DAV}}}acl"
ACE = f"{{{DAV}}}ace"
PRINCIPAL = f"{{{DAV}}}principal"
GRANT = f"{{{DAV}}}grant"
PRIVILEGE = f"{{{DAV}}}privilege"
AUTHENTICATED = f"{{{DAV}}}authenticated"

# Aggregates (RFC 3744 §3.12, CalDAV §6.1) as a server may report them instead of the
# privileges they hold: compared by what they contain.
_WRITE_PARTS = ("write-content", "write-properties", "bind", "unbind")
_AGGREGATES = {f"{{{DAV}}}write": {f"{{{DAV}}}{p}" for p in _WRITE_PARTS}}


@dataclass(frozen=True, slots=True)
class Ace:
    principal: str  # a canonical href path, or the Clark name of a pseudo-principal
    privileges: frozenset[str]  # granted, Clark names ("" for a deny: see ``grant``)
    grant: bool  # grant (True) or deny
    protected: bool
    inherited: bool
    node: etree._Element  # the ACE as the server wrote it

    @property
    def by_href(self) -> bool:
        return self.principal.startswith("/")


def principal_key(href: str) -> str:
    """An href as ACEs are compared: its path, decoded and in canonical form."""
    return canonical(unquote(davxml.href_path(href)))


def expanded(privileges: Iterable[str]) -> frozenset[str]:
    """Privileges with every aggregate also counted as what it contains."""
    found = set(privileges)
    for name in list(found):
        found |= _AGGREGATES.get(name, set())
    return frozenset(found)


def parse_acl(body: bytes) -> list[Ace] | None:
    """The ACEs of a PROPFIND answer's ``DAV:acl``; None when it does not carry one (the
    property missing or refused, or the document unusable)."""
    try:
        root = davxml.parse(body)
    except davxml.XmlError:
        return None
    node = root.find(davxml.RESPONSE)
    acl = davxml.found_prop(node, ACL) if node is not None else None
    if acl is None:
        return None
    aces = []
    for ace in acl.findall(ACE):
        principal = ace.find(PRINCIPAL)
        who = principal[0] if principal is not None and len(principal) else None
        if who is None:
            continue
        name = principal_key(who.text or "") if who.tag == davxml.HREF else str(who.tag)
        granted = ace.find(GRANT)
        held = granted if granted is not None else ace.find(f"{{{DAV}}}deny")
        listed = held if held is not None else ()
        privileges = frozenset(str(p[0].tag) for p in listed if p.tag == PRIVILEGE and len(p))
        aces.append(
            Ace(
                principal=name,
                privileges=privileges,
                grant=granted is not None,
                protected=ace.find(f"{{{DAV}}}protected") is not None,
                inherited=ace.find(f"{{{DAV}}}inherited") is not None,
                node=ace,
            )
        )
    return aces


def grant_ace(principal_href: str, privileges: Iterable[str]) -> etree._Element:
    """An ACE granting ``privileges`` (Clark names; none: an empty grant) to one principal."""
    return davxml.element(
        ACE,
        davxml.element(PRINCIPAL, davxml.href(principal_href)),
        davxml.element(
            GRANT, *(davxml.element(PRIVILEGE, davxml.element(p)) for p in sorted(privileges))
        ),
    )


def acl_body(aces: Iterable[etree._Element]) -> bytes:
    """An ``ACL`` request body; others' ACEs are sent back as the server wrote them."""
    return davxml.serialize(davxml.element(ACL, *(copy.deepcopy(ace) for ace in aces)))


def refusal(body: bytes) -> str:
    """The precondition an ``ACL`` error answer names (``no-ace-conflict``), with the
    server's text; "" when the answer names none."""
    try:
        root = davxml.parse(body)
    except davxml.XmlError:
        return ""
    if root.tag != davxml.ERROR or not len(root):
        return ""
    condition = etree.QName(root[0]).localname
    text = " ".join("".join(root.itertext()).split())
    return f"{condition}: {text}" if text else condition


READ = frozenset(
    {f"{{{DAV}}}read", f"{{{DAV}}}read-current-user-privilege-set", f"{{{CALDAV}}}read-free-busy"}
)
# Writing members, not the collection's own properties: a sharee never renames the
# owner's collection (their display name for the copy is davproxy's, per sharee).
READ_WRITE = READ | {f"{{{DAV}}}write-content", f"{{{DAV}}}bind", f"{{{DAV}}}unbind"}
SHARE_PRIVILEGES: dict[str, frozenset[str]] = {"read": READ, "read-write": READ_WRITE}
