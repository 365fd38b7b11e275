"""Principals davproxy answers for itself: the groups, and principal searches.

Neither upstream has group principals or a principal search (Radicale answers the
search REPORTs with an empty multistatus, Xandikos not at all), so clients that
autocomplete sharees find nobody.  davproxy answers, from its own directory:

* PROPFIND on ``<prefix>.davproxy/groups/`` and on each group principal below it
  (RFC 3744 §4: ``D:group-member-set`` direct members, ``D:group-membership``;
  RFC 6638 ``C:calendar-user-address-set`` and ``C:calendar-user-type`` GROUP; the CCS
  ``CS:record-type``, ``CS:email-address-set``, ``CS:expanded-group-member-set``);
  directory groups are read-only (PROPPATCH: 403 ``D:cannot-modify-protected-property``).
* ``D:principal-property-search`` (RFC 3744 §9.4 with the CCS and sabre extensions:
  ``test``, ``type``, ``match-type``, ``caseless``, ``CS:limit``),
  ``D:principal-search-property-set`` (§9.5) and CalendarServer's
  ``CS:calendarserver-principal-search``, over users and groups alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from lxml import etree

from davproxy.dav import davxml
from davproxy.dav.davxml import CALDAV, CARDDAV, CS, DAV, element, href
from davproxy.dav.errors import DavError, PlainError
from davproxy.dav.http import multistatus_response
from davproxy.sharing.group_store import GroupRecord
from davproxy.sharing.groups import GroupSharing
from davproxy.upstream.client import Upstream
from davproxy.upstream.directory import Directory

PRINCIPAL_PROPERTY_SEARCH = f"{{{DAV}}}principal-property-search"
SEARCH_PROPERTY_SET = f"{{{DAV}}}principal-search-property-set"
CS_PRINCIPAL_SEARCH = f"{{{CS}}}calendarserver-principal-search"
SEARCH_REPORTS = frozenset({PRINCIPAL_PROPERTY_SEARCH, SEARCH_PROPERTY_SET, CS_PRINCIPAL_SEARCH})
# The DAV: feature tokens for what this module answers (digest groups.md §1).
PRINCIPAL_TOKENS = (
    "calendarserver-principal-property-search",
    "calendarserver-principal-search",
    "calendarserver-group-sharee",
)
PROTECTED = f"{{{DAV}}}cannot-modify-protected-property"
_LIMIT_EXCEEDED = f"{{{DAV}}}number-of-matches-within-limits"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
DISPLAYNAME = f"{{{DAV}}}displayname"
EMAILS = f"{{{CS}}}email-address-set"
ADDRESSES = f"{{{CALDAV}}}calendar-user-address-set"
FIRST_NAME = f"{{{CS}}}first-name"
LAST_NAME = f"{{{CS}}}last-name"
# What a search may match on, and how each is described (principal-search-property-set).
SEARCHABLE = {
    DISPLAYNAME: "Display name",
    EMAILS: "E-mail addresses",
    ADDRESSES: "Calendar user addresses",
    FIRST_NAME: "First name",
    LAST_NAME: "Last name",
}
MAX_RESULTS = 1000
CALENDAR_HOME = f"{{{CALDAV}}}calendar-home-set"
BOOK_HOME = f"{{{CARDDAV}}}addressbook-home-set"
HOME_SETS = frozenset({CALENDAR_HOME, BOOK_HOME})
# Children of a search REPORT that are its structure, not properties asked for.
_STRUCTURE = frozenset(
    {f"{{{DAV}}}property-search", davxml.PROP, f"{{{DAV}}}apply-to-principal-collection-set",
     f"{{{CS}}}limit", f"{{{CS}}}search-token"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Principal:
    url: str
    kind: str  # INDIVIDUAL | GROUP
    display_name: str
    emails: tuple[str, ...]
    addresses: tuple[str, ...]  # calendar-user-address-set
    props: dict[str, etree._Element]

    def values(self, name: str) -> list[str]:
        """The texts a property search compares with."""
        if name == DISPLAYNAME:
            return [self.display_name]
        if name == EMAILS:
            return list(self.emails)
        if name == ADDRESSES:
            return list(self.addresses)
        first, _, last = self.display_name.partition(" ")
        return [first] if name == FIRST_NAME else [last] if last else []


class Principals:
    """Users and groups of one upstream, as principals davproxy describes itself."""

    def __init__(self, directory: Directory, upstream: Upstream, groups: GroupSharing) -> None:
        self.directory = directory
        self.upstream = upstream
        self.groups = groups
        self.collection = f"{upstream.paths.public}.davproxy/groups/"

    def everyone(self) -> list[Principal]:
        groups = self.groups.groups()
        found = [self.user(u, groups) for u in self.directory.users()]
        return found + [self.group(g, groups) for g in groups.values()]

    def user(self, user: str, groups: dict[str, GroupRecord]) -> Principal:
        paths = self.upstream.user_paths(user)
        email = self.directory.email(user)
        emails = (email,) if email else ()
        principal = self._principal(
            paths.principal, "INDIVIDUAL", self.directory.display_name(user), emails,
            (*(f"mailto:{e}" for e in emails), paths.principal),
            [g.id for g in groups.values() if user in g.members],
        )  # fmt: skip
        principal.props[CALENDAR_HOME] = element(CALENDAR_HOME, href(paths.calendar_home))
        principal.props[BOOK_HOME] = element(BOOK_HOME, href(paths.addressbook_home))
        return principal

    def group(self, group: GroupRecord, groups: dict[str, GroupRecord]) -> Principal:
        url = self.groups.principal(group.id)
        addresses = (f"urn:x-uid:{group.id}", *(f"mailto:{e}" for e in group.emails), url)
        principal = self._principal(
            url, "GROUP", group.display_name, group.emails, addresses,
            [g.id for g in groups.values() if group.id in g.members],
        )  # fmt: skip
        principal.props[f"{{{DAV}}}group-member-set"] = element(
            f"{{{DAV}}}group-member-set", *(href(self._url(m, groups)) for m in group.members)
        )
        nested = _nested(group.id, groups)
        principal.props[f"{{{CS}}}expanded-group-member-set"] = element(
            f"{{{CS}}}expanded-group-member-set",
            *(href(self._url(m, groups)) for m in sorted(group.expanded | nested)),
        )
        return principal

    def _url(self, member: str, groups: dict[str, GroupRecord]) -> str:
        if member in groups:
            return self.groups.principal(member)
        return self.upstream.user_paths(member).principal

    def _principal(
        self,
        url: str,
        kind: str,
        name: str,
        emails: tuple[str, ...],
        addresses: tuple[str, ...],
        memberships: list[str],
    ) -> Principal:
        first, _, last = name.partition(" ")
        props = {
            DISPLAYNAME: element(DISPLAYNAME, text=name),
            f"{{{DAV}}}resourcetype": element(
                f"{{{DAV}}}resourcetype", element(f"{{{DAV}}}principal")
            ),
            f"{{{DAV}}}principal-URL": element(f"{{{DAV}}}principal-URL", href(url)),
            ADDRESSES: element(ADDRESSES, *(href(a) for a in addresses)),
            EMAILS: element(EMAILS, *(element(f"{{{CS}}}email-address", text=e) for e in emails)),
            f"{{{CALDAV}}}calendar-user-type": element(
                f"{{{CALDAV}}}calendar-user-type", text=kind
            ),
            f"{{{CS}}}record-type": element(
                f"{{{CS}}}record-type", text="users" if kind == "INDIVIDUAL" else "groups"
            ),
            f"{{{DAV}}}group-membership": element(
                f"{{{DAV}}}group-membership",
                *(href(self.groups.principal(g)) for g in memberships),
            ),
            FIRST_NAME: element(FIRST_NAME, text=first),
            LAST_NAME: element(LAST_NAME, text=last),
        }
        return Principal(url, kind, name, emails, addresses, props)

    # -- <prefix>.davproxy/groups/ ------------------------------------------------------

    async def serve(self, request: web.Request, below: str, body: bytes) -> web.StreamResponse:
        """A request under the groups collection (``below``: "" or "/…")."""
        if below == "":
            raise web.HTTPMovedPermanently(self.collection)
        name = below.strip("/")
        groups = self.groups.groups()
        if name and (name not in groups or below != f"/{name}/"):
            raise DavError(404, None, "no such group")
        target = self.group(groups[name], groups) if name else None
        method = request.method
        if method == "OPTIONS":
            return web.Response(
                headers={
                    "Allow": "OPTIONS, PROPFIND, REPORT",
                    "DAV": "1, 3, access-control, " + ", ".join(PRINCIPAL_TOKENS),
                }  # fmt: skip
            )
        if method == "PROPPATCH":
            raise DavError(403, PROTECTED, "groups are read-only: edit the mapping file")
        if method == "REPORT":
            return self.report(request, body)
        if method != "PROPFIND":
            raise PlainError(405, "Method not allowed here", {"Allow": "OPTIONS, PROPFIND, REPORT"})
        try:
            wanted = davxml.parse_propfind(body)
        except davxml.XmlError as exc:
            raise DavError(400, None, f"unusable PROPFIND body: {exc}") from None
        if target is not None:
            return multistatus_response(davxml.multistatus(self._answer(target, wanted)))
        depth = request.headers.get("Depth", "infinity")
        listing = {
            DISPLAYNAME: element(DISPLAYNAME, text="Groups"),
            f"{{{DAV}}}resourcetype": element(
                f"{{{DAV}}}resourcetype", element(f"{{{DAV}}}collection")
            ),
        }
        responses = [davxml.answer(self.collection, listing, wanted)]
        if depth != "0":
            responses += [self._answer(self.group(g, groups), wanted) for g in groups.values()]
        return multistatus_response(davxml.multistatus(*responses))

    @staticmethod
    def _answer(principal: Principal, wanted: davxml.PropRequest) -> etree._Element:
        return davxml.answer(principal.url, principal.props, wanted)

    # -- the search REPORTs ----------------------------------------------------------------

    def report(self, request: web.Request, body: bytes) -> web.StreamResponse:
        root = davxml.parse(body)
        if request.headers.get("Depth", "0") != "0":
            raise DavError(400, None, "a principal search REPORT needs Depth: 0")
        if root.tag == SEARCH_PROPERTY_SET:
            return self._search_property_set()
        names = _wanted_names(root)
        if root.tag == PRINCIPAL_PROPERTY_SEARCH:
            test, matches = _property_search(root)
            kind = {"INDIVIDUAL": "INDIVIDUAL", "GROUP": "GROUP"}.get(root.get("type", ""), "")
            if root.get("type") and not kind:  # rooms and resources: davproxy has none
                return multistatus_response(davxml.multistatus())
            if not kind and HOME_SETS & set(names):
                # asking for home sets: principals whose collections the client will
                # open (the caldav library's search); groups have none
                kind = "INDIVIDUAL"
            combine = all if test == "allof" else any
            found = [
                p
                for p in self.everyone()
                if (not kind or p.kind == kind) and (not matches or combine(m(p) for m in matches))
            ]  # no property-search at all: everyone, as sabre/dav answers
        elif root.tag == CS_PRINCIPAL_SEARCH:
            found = self._cs_search(root)
        else:
            raise DavError(403, f"{{{DAV}}}supported-report", "not a principal search REPORT")
        wanted = davxml.PropRequest("prop", names or (DISPLAYNAME,))
        limit = _limit(root)
        responses = [self._answer(p, wanted) for p in found[:limit]]
        if len(found) > limit:  # CCS: the request-URI with 507 says results were cut
            cut = davxml.status_response(request.path, 507)
            cut.append(element(davxml.ERROR, element(_LIMIT_EXCEEDED)))
            responses.append(cut)
        return multistatus_response(davxml.multistatus(*responses))

    def _cs_search(self, root: etree._Element) -> list[Principal]:
        """``CS:calendarserver-principal-search``: every token matches the name
        (contains) or an address (starts with), case-insensitively."""
        tokens = [(t.text or "").strip().lower() for t in root.iterfind(f"{{{CS}}}search-token")]
        tokens = [t for t in tokens if t]
        if not any(len(t) > 1 for t in tokens):
            raise DavError(403, None, "a principal search needs a token of two characters or more")
        context = root.get("context", "")
        kinds = {"user": {"INDIVIDUAL"}, "group": {"GROUP"}, "": {"INDIVIDUAL", "GROUP"},
                 "attendee": {"INDIVIDUAL", "GROUP"}}.get(context, set())  # fmt: skip
        return [
            p
            for p in self.everyone()
            if p.kind in kinds
            and all(
                t in p.display_name.lower() or any(e.lower().startswith(t) for e in p.emails)
                for t in tokens
            )
        ]

    @staticmethod
    def _search_property_set() -> web.StreamResponse:
        root = element(SEARCH_PROPERTY_SET)
        for name, description in SEARCHABLE.items():
            root.append(
                element(
                    f"{{{DAV}}}principal-search-property",
                    element(davxml.PROP, etree.Element(name)),
                    element(f"{{{DAV}}}description", text=description, **{_XML_LANG: "en"}),
                )
            )
        return web.Response(
            body=davxml.serialize(root), content_type="application/xml", charset="utf-8"
        )


def _nested(group_id: str, groups: dict[str, GroupRecord]) -> set[str]:
    """The groups inside a group, through nesting."""
    found: set[str] = set()
    stack = [group_id]
    while stack:
        for member in groups[stack.pop()].members:
            if member in groups and member not in found:
                found.add(member)
                stack.append(member)
    return found


Match = Callable[[Principal], bool]


def _wanted_names(root: etree._Element) -> tuple[str, ...]:
    """The properties a search REPORT asks for: its ``D:prop``, and (liberal in what is
    accepted) property elements placed beside it, as the caldav library sends them."""
    prop = root.find(davxml.PROP)
    inside = [str(p.tag) for p in prop if isinstance(p.tag, str)] if prop is not None else []
    beside = [str(p.tag) for p in root if isinstance(p.tag, str) and p.tag not in _STRUCTURE]
    return tuple(dict.fromkeys(inside + beside))


def _property_search(root: etree._Element) -> tuple[str, list[Match]]:
    test = root.get("test", "allof")
    if test not in ("allof", "anyof"):
        raise DavError(400, None, "test must be allof or anyof")
    matches: list[Match] = []
    for search in root.iterfind(f"{{{DAV}}}property-search"):
        names = [str(p.tag) for p in search.iterfind(f"{{{DAV}}}prop/*") if p.tag in SEARCHABLE]
        match = search.find(f"{{{DAV}}}match")
        if match is None:
            raise DavError(400, None, "each DAV:property-search needs a DAV:match")
        if names:  # only properties davproxy does not search: ignored, as CCS does
            matches.append(_matcher(names, match))
    if not matches and root.find(f"{{{DAV}}}property-search") is not None:
        matches.append(lambda _: False)  # nothing it can search on: no match
    return test, matches


def _matcher(names: Iterable[str], match: etree._Element) -> Match:
    kind = match.get("match-type", "contains")
    if kind not in ("contains", "starts-with", "equals", "ends-with"):
        raise DavError(400, None, f"unknown match-type {kind!r}")
    caseless = match.get("caseless", "yes") != "no"
    wanted = (match.text or "").strip()
    if caseless:
        wanted = wanted.casefold()
    names = tuple(names)

    def test(value: str) -> bool:
        value = value.casefold() if caseless else value
        if kind == "equals":
            return value == wanted
        if kind == "starts-with":
            return value.startswith(wanted)
        if kind == "ends-with":
            return value.endswith(wanted)
        return wanted in value

    return lambda principal: any(test(v) for n in names for v in principal.values(n))


def _limit(root: etree._Element) -> int:
    node = root.find(f"{{{CS}}}limit")
    if node is None:
        return MAX_RESULTS
    text = (node.findtext(f"{{{CS}}}nresults") or "").strip()
    if not text.isdigit() or int(text) < 1:
        raise DavError(400, None, "CS:limit needs CS:nresults, a positive number")
    return min(int(text), MAX_RESULTS)
