"""The sharing web page in a real headless Chromium (Debian's chromium + chromium-driver,
driven with Selenium): share, accept, check with a DAV client, change access, revoke,
subscribe and refresh, with JavaScript on and off; screenshots of the main screens go
to ``artifacts/screenshots/`` (git-ignored)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.feed_origin import calendar, event
from tests.helpers import USERS
from tests.web.conftest import ARTIFACTS, WebSite

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = ARTIFACTS / "screenshots"

if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
    pytest.skip(
        "Chromium is not installed and could not be: run `apt-get install chromium "
        "chromium-driver` (.ci/run and `make test` do it as root)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1100,900",
)  # fmt: skip


def _browser(javascript: bool = True) -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="davproxy-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    yield from _browser()


@pytest.fixture(scope="module")
def browser_without_js() -> Iterator[webdriver.Chrome]:
    yield from _browser(javascript=False)


class Person:
    """One user in the browser, finding things as a person would: by labels and text."""

    def __init__(self, driver: webdriver.Chrome, site: WebSite) -> None:
        self.driver, self.site = driver, site

    def open(self, page: str = "") -> None:
        self.driver.get(self.site.page + page)

    def login(self, user: str) -> None:
        self.driver.delete_all_cookies()
        self.open("login")
        self.field("User name").send_keys(user)
        self.field("Password").send_keys(USERS[user])
        self.click("Log in")
        self.wait_text("My calendars and address books")

    def logout(self) -> None:
        self.click("Log out")
        self.wait_text("Log in")

    def field(self, label: str, within: object | None = None):  # type: ignore[no-untyped-def]
        root = within or self.driver
        found = root.find_element(By.XPATH, f".//label[starts-with(normalize-space(.), '{label}')]")  # type: ignore[attr-defined]
        return self.driver.find_element(By.ID, found.get_attribute("for"))

    def click(self, text: str, within: object | None = None) -> None:
        root = within or self.driver
        xpath = f".//button[normalize-space(.)='{text}' or starts-with(normalize-space(.), '{text} ')] | .//a[normalize-space(.)='{text}']"
        root.find_element(By.XPATH, xpath).click()  # type: ignore[attr-defined]

    def card(self, heading: str):  # type: ignore[no-untyped-def]
        return self.driver.find_element(
            By.XPATH,
            f"//li[contains(@class,'card')][.//*[self::h2 or self::h3][contains(normalize-space(.), '{heading}')]]",
        )

    def wait_text(self, text: str) -> None:
        """Until the page shows ``text`` (a page being replaced meanwhile is looked at again)."""

        def shown(driver: webdriver.Chrome) -> bool:
            try:
                return text in driver.find_element(By.TAG_NAME, "body").text
            except WebDriverException:  # the old page went away under the lookup
                return False

        WebDriverWait(self.driver, 15).until(shown)

    def notice(self) -> str:
        return str(self.driver.find_element(By.CSS_SELECTOR, ".notice").text)

    def accept_dialog(self) -> None:
        WebDriverWait(self.driver, 5).until(expected_conditions.alert_is_present())
        self.driver.switch_to.alert.accept()

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(SHOTS / f"{name}.png"))

    def no_injected_script(self) -> None:
        assert self.driver.execute_script("return window.__xss === undefined")
        assert not self.driver.find_elements(By.CSS_SELECTOR, "main img, main svg, main script")


def test_share_accept_downgrade_revoke_and_subscribe(
    browser: webdriver.Chrome, web_site: WebSite
) -> None:
    alice = Person(browser, web_site)
    alice.open()
    alice.wait_text("Log in")
    alice.shot("01-login")
    alice.login("alice")
    alice.no_injected_script()  # the hostile calendar name is on this page
    alice.shot("02-my-collections")

    # alice shares her calendar with bob, typing part of his name (suggestions come from the directory)
    alice.click("Share and set up Calendar")
    alice.wait_text("Share with someone")
    person = alice.field("Person")
    person.send_keys("Bo")
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return document.querySelectorAll('#people option').length") > 0
    )
    suggestion = browser.execute_script("return document.querySelector('#people option').value")
    assert suggestion == "Bob <bob@example.org>"
    person.clear()
    person.send_keys(suggestion)
    browser.find_element(By.CSS_SELECTOR, "input[name=access][value=read-write]").click()
    alice.field("Message").send_keys("Team calendar: add your trips")
    alice.click("Share")
    alice.wait_text("Shared with Bob")
    card = alice.card("Bob")
    assert "invited, no answer yet" in card.text
    alice.shot("03-collection-shared")
    alice.logout()

    # bob sees the invitation and accepts it under a name and colour of his own
    bob = Person(browser, web_site)
    bob.login("bob")
    assert "Invitations 1" in browser.find_element(By.CSS_SELECTOR, "nav.tabs").text.replace(
        "\n", " "
    )
    bob.open("invitations")
    invitation = bob.card("Alice shares “Calendar”")
    assert (
        "Team calendar: add your trips" in invitation.text and "read and write" in invitation.text
    )
    bob.shot("04-invitation")
    name = bob.field("Name in your account", invitation)
    assert name.get_attribute("value") == "Calendar (Alice)"
    name.clear()
    name.send_keys("Team (Alice)")
    browser.execute_script("arguments[0].value = '#c01c28'", bob.field("Colour", invitation))
    bob.click("Accept", invitation)
    bob.wait_text("Accepted: “Team (Alice)” is now in your account")
    bob.shot("05-accepted")
    # a DAV client sees the copy in bob's home
    names = asyncio.run(web_site.displaynames("bob"))
    assert "Team (Alice)" in names
    color = asyncio.run(
        web_site.dav(
            "bob", "PROPFIND", "/bob/calendar-alice/",
            '<D:propfind xmlns:D="DAV:" xmlns:I="http://apple.com/ns/ical/"><D:prop><I:calendar-color/></D:prop></D:propfind>',
            Depth="0",
        )
    )  # fmt: skip
    assert b"#c01c28" in color.body
    bob.logout()

    # alice sees the acceptance, downgrades bob to read only, then revokes
    alice.login("alice")
    alice.open("collection?c=alice/calendar/")
    card = alice.card("Bob")
    assert "accepted" in card.text
    Select(alice.field("Access for Bob", card)).select_by_visible_text("Read only")
    alice.click("Change access", card)
    alice.wait_text("Bob can now read only")
    put = asyncio.run(
        web_site.dav(
            "bob",
            "PUT",
            "/bob/calendar-alice/x.ics",
            calendar(event("x@t", "X")),
            Content_Type="text/calendar",
        )
    )
    assert put.status == 403  # read only now
    alice.click("Stop sharing", alice.card("Bob"))
    alice.accept_dialog()
    alice.wait_text("No longer shared with Bob")
    assert "Team (Alice)" not in asyncio.run(web_site.displaynames("bob"))

    # alice subscribes to a feed, the origin changes, she refreshes now
    alice.open("subscriptions")
    alice.field("Address").send_keys(web_site.origin.url("/holidays.ics"))
    alice.field("Name").send_keys("Public holidays")
    alice.click("Subscribe")
    alice.wait_text("Subscribed: “Public holidays”")
    feed = alice.card("Public holidays")
    assert "up to date" in feed.text and "1 item" in feed.text
    web_site.origin.serve(
        "/holidays.ics",
        calendar(event("h@t", "Holiday"), event("h2@t", "Another day"), name="Holidays"),
    )
    alice.click("Refresh now", feed)
    alice.wait_text("Fetched: 1 added, 0 changed, 0 removed")
    assert "2 items" in alice.card("Public holidays").text
    assert "Public holidays" in asyncio.run(web_site.displaynames("alice"))
    alice.shot("06-subscriptions")
    alice.open("help")
    alice.wait_text("Thunderbird")
    alice.shot("07-setup-help")
    browser.set_window_size(390, 844)  # a phone
    alice.open("subscriptions")
    alice.shot("08-phone-subscriptions")
    browser.set_window_size(1100, 900)
    alice.click("Unsubscribe", alice.card("Public holidays"))
    alice.accept_dialog()
    alice.wait_text("Unsubscribed from “Public holidays”")
    alice.logout()


def test_markup_never_runs(browser: webdriver.Chrome, web_site: WebSite) -> None:
    """Hostile display names, comments and feed titles are shown as text in the browser."""
    carol = Person(browser, web_site)
    carol.login("carol")
    carol.open("collection?c=carol/calendar/")
    carol.field("Person").send_keys("mallory@example.org")
    carol.field("Message").send_keys("<script>window.__xss=5</script>")
    carol.click("Share")
    carol.wait_text("Shared with")
    carol.no_injected_script()
    assert "<img src=x" in carol.card("Mallory").text
    carol.open("subscriptions")
    carol.field("Address").send_keys(web_site.origin.url("/team.ics"))
    carol.click("Subscribe")
    carol.wait_text("Subscribed")
    carol.no_injected_script()
    assert (
        "<script>window.__xss=3</script>Team feed" in browser.find_element(By.TAG_NAME, "main").text
    )
    carol.click("Unsubscribe", carol.card("Team feed"))
    carol.accept_dialog()
    carol.wait_text("Unsubscribed")
    carol.logout()


def test_core_actions_work_without_javascript(
    browser_without_js: webdriver.Chrome, web_site: WebSite
) -> None:
    carol = Person(browser_without_js, web_site)
    carol.login("carol")
    carol.open("collection?c=carol/calendar/")
    carol.field("Person").send_keys("dave@corp")  # a user id, typed in full
    carol.click("Share")
    carol.wait_text("Shared with Dave@Corp")
    carol.logout()
    dave = Person(browser_without_js, web_site)
    dave.login("dave@corp")
    dave.open("invitations")
    invitation = dave.card("Carol shares “Calendar”")
    dave.click("Accept", invitation)
    dave.wait_text("is now in your account")
    copy = dave.card("Calendar (Carol)")
    dave.click("Leave", copy)  # no confirmation dialog without JavaScript
    dave.wait_text("You left the share from Carol")
    dave.logout()
    carol.login("carol")
    carol.open("collection?c=carol/calendar/")
    assert "declined" in carol.card("Dave@Corp").text
    carol.click("Stop sharing", carol.card("Dave@Corp"))
    carol.wait_text("No longer shared with Dave@Corp")
    carol.logout()
