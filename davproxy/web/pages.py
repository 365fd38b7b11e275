"""The sharing web page's HTTP side: everything below ``<prefix>.davproxy/web/``.

Server-rendered HTML (Jinja2 with autoescaping on, so display names, comments and
feed titles are always text, never markup), two small local assets (``static/``),
and a JSON list of people for the share form's suggestions.  What it shows and does
lives in ``account.py``; sessions in ``sessions.py``.

Security, for every answer: a strict Content-Security-Policy (nothing but this page's
own script, style and forms; no inline script or style, no frames), ``nosniff``,
``no-store`` for pages, ``same-origin`` referrers.  Logging in checks the password
with the upstream's ``Authenticator`` exactly as a Basic header would be checked,
then opens a new server-side session (cookie ``HttpOnly``, ``SameSite=Lax``,
``Secure`` when the client's connection is HTTPS, as seen directly or through
``X-Forwarded-Proto`` from a peer in ``forwarded_allow_ips``); failed logins are
slowed down by the same guard as failed Basic logins (``edge/guard.py``, with the
same access-log and metrics entries).  Every state change
is a POST that must carry the session's CSRF token and must not come from another
origin (``Origin``/``Sec-Fetch-Site``, when the browser sends them); the login form
has its own token (a cookie and a field that must agree).  GET never changes
anything.  Each action answers with a redirect (POST/redirect/GET), so the page works
without JavaScript; when an action is refused the page is shown again with the
reason and a 4xx status.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from aiohttp import web

from davproxy.dav.errors import PlainError
from davproxy.dav.paths import canonical, slash
from davproxy.edge.guard import FORM_LOGIN, GUARD
from davproxy.edge.sites import Site
from davproxy.upstream.proxy import client_address
from davproxy.upstream.site import USER, Context
from davproxy.web import people
from davproxy.web.account import Account, Problem, SignedOut
from davproxy.web.sessions import Session

WEB_SEGMENT = "web"
COOKIE = "davproxy_session"
LOGIN_COOKIE = "davproxy_login"
FORM_LIMIT = 64 * 1024  # bytes of a form body: far more than any form here needs
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("davproxy.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    version: str


def _load_assets() -> dict[str, Asset]:
    types = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
    found = {}
    for item in resources.files("davproxy.web").joinpath("static").iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in types:
            body = item.read_bytes()
            found[item.name] = Asset(body, types[suffix], hashlib.sha256(body).hexdigest()[:12])
    return found


ASSETS = _load_assets()


def _when(stamp: float | None) -> str:
    if not stamp:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp))


def _iso(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)) if stamp else ""


_templates.filters["when"] = _when
_templates.filters["iso"] = _iso


# -- the page's own plumbing ----------------------------------------------------------


class Page:
    """One request to the page, with the session once it is known."""

    def __init__(self, ctx: Context, site: Site) -> None:
        self.ctx = ctx
        self.site = site
        self.request = ctx.request
        self.base = site.upstream.paths.public + f".davproxy/{WEB_SEGMENT}/"
        self.session: Session | None = None
        self.account: Account | None = None

    @property
    def secure(self) -> bool:
        return self.ctx.origin.startswith("https://")

    def link(self, page: str = "", **query: str) -> str:
        suffix = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        return self.base + page + (f"?{suffix}" if suffix else "")

    def headers(self, response: web.StreamResponse, cache: bool = False) -> web.StreamResponse:
        response.headers.update(SECURITY_HEADERS)
        if not cache:
            response.headers["Cache-Control"] = "no-store"
        return response

    def redirect(self, target: str) -> web.Response:
        return self.headers(web.Response(status=303, headers={"Location": target}))  # type: ignore[return-value]

    def render(self, template: str, status: int = 200, **values: Any) -> web.Response:
        session, account = self.session, self.account
        context = {
            "base": self.base,
            "assets": {
                name: f"{self.base}static/{name}?v={a.version}" for name, a in ASSETS.items()
            },
            "user": session.user if session else None,
            "user_name": self.site.sharing.directory.display_name(session.user) if session else "",
            "csrf": session.csrf if session else "",
            "pending": len(account.invitations()) if account else 0,
            "flash": None,
            "error": None,
            "current": template.removesuffix(".html"),
            "typed": self.request.get("typed", {}),
            **values,
        }
        if session is not None and context["flash"] is None and status < 400:
            context["flash"] = self.site.web.take_flash(session)
        html = _templates.get_template(template).render(context)
        response = web.Response(status=status, text=html, content_type="text/html", charset="utf-8")
        return self.headers(response)  # type: ignore[return-value]

    async def form(self) -> dict[str, str]:
        """A urlencoded form body (one value per field; 413 past FORM_LIMIT)."""
        declared = self.request.content_length
        if declared is not None and declared > FORM_LIMIT:
            raise PlainError(413, "Form too large")
        body = await self.ctx.body()
        if len(body) > FORM_LIMIT:
            raise PlainError(413, "Form too large")
        kind = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise Problem(415, "Send the page's own forms")
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            raise Problem(400, "Unreadable form") from None
        return {name: values[0] for name, values in fields.items()}

    def same_origin(self) -> bool:
        """A POST from this page, as far as the browser tells (CSRF defence in depth)."""
        origin = self.request.headers.get("Origin")
        if origin is not None and origin != self.ctx.origin:
            return False
        fetch_site = self.request.headers.get("Sec-Fetch-Site")
        return fetch_site is None or fetch_site in ("same-origin", "none")


# -- entry ----------------------------------------------------------------------------


async def serve(ctx: Context, site: Site, below: str) -> web.StreamResponse:
    """``below`` is what follows ``<prefix>.davproxy/web`` ("" or "/…")."""
    page = Page(ctx, site)
    if below == "":
        return page.redirect(page.base)
    name = below[1:]
    method = ctx.method
    if method not in ("GET", "HEAD", "POST"):
        raise PlainError(405, "Method not allowed here", {"Allow": "GET, HEAD, POST"})
    if name.startswith("static/"):
        return _asset(page, name[len("static/") :])
    if name == "login":
        return await (_login(page) if method == "POST" else _login_form(page))
    session = await _session(page)
    if session is None:
        if method == "POST":  # a session that ended meanwhile: nothing is done
            values = _login_values(page, "Your session has ended: please log in again")
            return _with_login_cookie(page, page.render("login.html", 403, **values))
        return page.redirect(page.link("login"))
    if method == "POST":
        return await _action(page, name)
    view = VIEWS.get(name)
    if view is None:
        return page.render("error.html", 404, message="No such page")
    try:
        return await view(page)
    except Problem as problem:
        return page.render("error.html", problem.status, message=problem.text)
    except SignedOut:
        return _signed_out(page)


async def _session(page: Page) -> Session | None:
    """The request's live session, still valid for its user (else ended here)."""
    site = page.site
    session = site.web.find(page.request.cookies.get(COOKIE))
    if session is None:
        return None
    auth = site.auth
    authorization: str | None = None
    if auth.proxy_auth:
        await auth.notice_changes()
        current = auth.htpasswd.fingerprint(session.user) if auth.htpasswd else None
        if current is None or not hmac.compare_digest(current, session.binding):
            site.web.end(session)  # the password changed, or the user is gone
            return None
    else:
        authorization = site.web.credentials(session)
        if authorization is None:
            site.web.end(session)  # upstream-basic after a restart: log in again
            return None
    page.session = session
    page.account = Account(site, session.user, authorization, page.ctx.origin)
    page.request[USER] = session.user  # for the access log
    return session


def _signed_out(page: Page) -> web.StreamResponse:
    if page.session is not None:
        page.site.web.end(page.session)
    return page.redirect(page.link("login"))


def _asset(page: Page, name: str) -> web.StreamResponse:
    asset = ASSETS.get(name)
    if asset is None:
        return page.headers(web.Response(status=404, text="No such file\n"))
    response = web.Response(body=asset.body, content_type=asset.content_type)
    if asset.content_type.startswith("text/"):
        response.charset = "utf-8"
    fresh = page.request.query.get("v") == asset.version
    response.headers["Cache-Control"] = (
        "public, max-age=31536000, immutable" if fresh else "no-cache"
    )
    response.headers["ETag"] = f'"{asset.version}"'
    return page.headers(response, cache=True)


# -- logging in and out ---------------------------------------------------------------


def _login_values(page: Page, error: str | None = None, user: str = "") -> dict[str, Any]:
    token = page.request.cookies.get(LOGIN_COOKIE) or ""
    if len(token) != 43:
        token = secrets.token_urlsafe(32)
    page.request["login_token"] = token
    return {"login_token": token, "error": error, "typed_user": user}


def _with_login_cookie(page: Page, response: web.Response) -> web.Response:
    token = page.request.get("login_token")
    if token:
        response.set_cookie(
            LOGIN_COOKIE, token, path=page.base, httponly=True, secure=page.secure,
            samesite="Strict",
        )  # fmt: skip
    return response


async def _login_form(page: Page) -> web.StreamResponse:
    if await _session(page) is not None:
        return page.redirect(page.base)
    return _with_login_cookie(page, page.render("login.html", **_login_values(page)))


async def _login(page: Page) -> web.StreamResponse:
    try:
        form = await page.form()
    except Problem as problem:
        values = _login_values(page, problem.text)
        return _with_login_cookie(page, page.render("login.html", problem.status, **values))
    cookie_token = page.request.cookies.get(LOGIN_COOKIE, "")
    typed = form.get("user", "").strip()
    if (
        not page.same_origin()
        or not cookie_token
        or not hmac.compare_digest(cookie_token.encode(), form.get("csrf", "").encode())
    ):
        values = _login_values(page, "The form had expired: please log in again", typed)
        return _with_login_cookie(page, page.render("login.html", 403, **values))
    site = page.site
    password = form.get("password", "")
    # The same guard as Basic logins: after failures from this address or for this
    # name, an attempt waits its turn (never the event loop) or is refused.
    guard = page.request.app.get(GUARD)
    client = client_address(page.request, page.ctx.limits.forwarded_allow_ips)
    wait = guard.admit(client, typed, password) if guard is not None else 0.0
    if wait is None:
        page.request[FORM_LOGIN] = "refused"
        values = _login_values(page, "Too many failed logins from here: try again later", typed)
        refused = page.render("login.html", 429, **values)
        refused.headers["Retry-After"] = str(math.ceil(guard.ceiling if guard else 1))
        return _with_login_cookie(page, refused)
    if wait > 0:
        await asyncio.sleep(wait)
    # Exactly the check a Basic header gets: the same Authenticator, the same cache.
    header = "Basic " + base64.b64encode(f"{typed}:{password}".encode()).decode()
    try:
        user = await site.auth.require_user(header)
    except PlainError as exc:
        if exc.status != 401:
            raise
        if guard is not None:
            guard.failed(client, typed)
        page.request[FORM_LOGIN] = "failed"
        values = _login_values(page, "Wrong user name or password", typed)
        return _with_login_cookie(page, page.render("login.html", 401, **values))
    if guard is not None:
        guard.succeeded(typed, password)
    binding = ""
    if site.auth.proxy_auth and site.auth.htpasswd is not None:
        binding = site.auth.htpasswd.fingerprint(user) or ""
    cookie, _session_opened = site.web.open(user, binding, None if site.auth.proxy_auth else header)
    page.request[USER] = user
    response = page.redirect(page.base)
    response.set_cookie(
        COOKIE, cookie, path=page.base, httponly=True, secure=page.secure, samesite="Lax"
    )
    response.del_cookie(LOGIN_COOKIE, path=page.base)
    return response


# -- pages (GET) ----------------------------------------------------------------------


async def _home(page: Page, error: str | None = None, status: int = 200) -> web.Response:
    account = _account(page)
    return page.render(
        "home.html", status,
        collections=await account.collections(), copies=account.copies(), error=error,
    )  # fmt: skip


async def _collection(
    page: Page, error: str | None = None, status: int = 200, rest: str | None = None
) -> web.Response:
    account = _account(page)
    wanted = rest if rest is not None else page.request.query.get("c", "")
    collection = await account.collection(wanted)
    return page.render(
        "collection.html", status, collection=collection, error=error,
        setup=_setup(page, account),
    )  # fmt: skip


async def _invitations(page: Page, error: str | None = None, status: int = 200) -> web.Response:
    account = _account(page)
    return page.render(
        "invitations.html", status,
        invitations=account.invitations(), copies=account.copies(), error=error,
    )  # fmt: skip


async def _subscriptions(page: Page, error: str | None = None, status: int = 200) -> web.Response:
    account = _account(page)
    return page.render(
        "subscriptions.html", status,
        feeds=account.subscriptions(), operator_feeds=account.operator_feeds(), error=error,
    )  # fmt: skip


async def _help(page: Page) -> web.Response:
    account = _account(page)
    return page.render(
        "help.html", setup=_setup(page, account), collections=await account.collections(),
        copies=account.copies(), feeds=account.subscriptions(),
        operator_feeds=account.operator_feeds(),
    )  # fmt: skip


async def _people(page: Page) -> web.StreamResponse:
    account = _account(page)
    found = people.suggest(account.directory, page.request.query.get("q", "")[:100], account.user)
    body = [{"id": p.id, "label": p.label, "kind": p.kind} for p in found]
    response = web.Response(text=json.dumps(body), content_type="application/json")
    return page.headers(response)


def _setup(page: Page, account: Account) -> dict[str, str]:
    paths = account.upstream.user_paths(account.user)
    origin = page.ctx.origin
    return {
        "server": origin + account.upstream.paths.public,
        "principal": origin + paths.principal,
        "calendar_home": origin + paths.calendar_home,
        "addressbook_home": origin + paths.addressbook_home,
        "user": account.user,
        "host": origin.split("://", 1)[1],
    }


def _account(page: Page) -> Account:
    assert page.account is not None
    return page.account


VIEWS: dict[str, Callable[[Page], Awaitable[web.StreamResponse]]] = {
    "": _home,
    "collection": _collection,
    "invitations": _invitations,
    "subscriptions": _subscriptions,
    "help": _help,
    "people": _people,
}


# -- actions (POST) -------------------------------------------------------------------


async def _action(page: Page, name: str) -> web.StreamResponse:
    session = page.session
    assert session is not None
    if name == "logout":
        form = await _checked_form(page)
        if isinstance(form, web.Response):
            return form
        page.site.web.end(session)
        response = page.redirect(page.link("login"))
        response.del_cookie(COOKIE, path=page.base)
        return response
    action = ACTIONS.get(name)
    if action is None:
        return page.render("error.html", 404, message="No such action")
    form = await _checked_form(page)
    if isinstance(form, web.Response):
        return form
    handler, shown_again = action
    try:
        target, message = await handler(page, form)
    except Problem as problem:
        page.request["typed"] = form  # the page again, with what was typed
        try:
            return await shown_again(page, form, problem)
        except Problem as again:
            return page.render(
                "error.html", problem.status, message=f"{problem.text}. {again.text}"
            )
    except SignedOut:
        return _signed_out(page)
    page.site.web.flash(session, "ok", message)
    return page.redirect(target)


async def _checked_form(page: Page) -> dict[str, str] | web.Response:
    """The form of a state change, or the refusal: another origin or no valid token."""
    assert page.session is not None
    try:
        form = await page.form()
    except Problem as problem:
        return page.render("error.html", problem.status, message=problem.text)
    if not page.same_origin() or not page.session.csrf_ok(form.get("csrf", "")):
        return page.render(
            "error.html", 403,
            message="Refused: the form did not come from this page (reload it and try again)",
        )  # fmt: skip
    return form


Form = dict[str, str]
Action = Callable[[Page, Form], Awaitable[tuple[str, str]]]
Again = Callable[[Page, Form, Problem], Awaitable[web.StreamResponse]]


async def _share(page: Page, form: Form) -> tuple[str, str]:
    rest = canonical(slash(form.get("collection", "")))
    name = await _account(page).share(
        rest, form.get("sharee", ""), form.get("access", "read"), form.get("comment", "")[:4096]
    )
    return page.link("collection", c=rest), f"Shared with {name}: they are invited"


async def _access(page: Page, form: Form) -> tuple[str, str]:
    share = await _account(page).change_access(
        form.get("collection", ""), form.get("sharee", ""), form.get("access", "")
    )
    name = page.site.sharing.directory.display_name(share.sharee)
    level = "read and write" if form.get("access") == "read-write" else "read only"
    return page.link("collection", c=share.collection), f"{name} can now {level}"


async def _revoke(page: Page, form: Form) -> tuple[str, str]:
    share = await _account(page).revoke(form.get("collection", ""), form.get("sharee", ""))
    name = page.site.sharing.directory.display_name(share.sharee)
    return page.link("collection", c=share.collection), f"No longer shared with {name}"


async def _again_collection(page: Page, form: Form, problem: Problem) -> web.StreamResponse:
    rest = form.get("collection", "")
    return await _collection(page, problem.text, problem.status, rest)


async def _answer(page: Page, form: Form) -> tuple[str, str]:
    account = _account(page)
    uid = form.get("invitation", "")
    if form.get("answer") == "accept":
        copy = await account.accept(uid, form.get("name", ""), form.get("color", ""))
        return page.link("invitations"), f"Accepted: “{copy.name}” is now in your account"
    if form.get("answer") == "decline":
        share = await account.decline(uid)
        owner = page.site.sharing.directory.display_name(share.owner)
        return page.link("invitations"), f"Declined the invitation from {owner}"
    raise Problem(400, "Choose accept or decline")


async def _leave(page: Page, form: Form) -> tuple[str, str]:
    share = await _account(page).leave(form.get("invitation", ""))
    owner = page.site.sharing.directory.display_name(share.owner)
    return page.link("invitations"), f"You left the share from {owner}"


async def _again_invitations(page: Page, form: Form, problem: Problem) -> web.StreamResponse:
    return await _invitations(page, problem.text, problem.status)


async def _subscribe(page: Page, form: Form) -> tuple[str, str]:
    row = await _account(page).subscribe(
        form.get("url", ""), form.get("name", ""), form.get("color", "")
    )
    return page.link("subscriptions"), f"Subscribed: “{row.name}” is now a calendar of yours"


async def _refresh(page: Page, form: Form) -> tuple[str, str]:
    message = await _account(page).refresh(form.get("subscription", ""))
    return page.link("subscriptions"), message


async def _unsubscribe(page: Page, form: Form) -> tuple[str, str]:
    name = _account(page).unsubscribe(form.get("subscription", ""))
    return page.link("subscriptions"), f"Unsubscribed from “{name}”"


async def _again_subscriptions(page: Page, form: Form, problem: Problem) -> web.StreamResponse:
    return await _subscriptions(page, problem.text, problem.status)


ACTIONS: dict[str, tuple[Action, Again]] = {
    "share": (_share, _again_collection),
    "access": (_access, _again_collection),
    "revoke": (_revoke, _again_collection),
    "answer": (_answer, _again_invitations),
    "leave": (_leave, _again_invitations),
    "subscribe": (_subscribe, _again_subscriptions),
    "refresh": (_refresh, _again_subscriptions),
    "unsubscribe": (_unsubscribe, _again_subscriptions),
}
