"""Airflow 3.3's React UI in headless Chromium (Playwright), as a person uses it: sign in, open
a DAG, press Trigger, fill the form. Shared by the browser tests and ``make screenshots``.

Debian's ``chromium`` is used (Playwright's own browser download is not needed). Selectors
follow what the 3.3 UI renders: params are fields named ``element_<param>``, sections are
accordion items titled by the params' ``section``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def chromium() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Page, url: str, path: str, username: str, password: str) -> None:
    """Open ``path``; the simple auth manager's login page comes first, then ``path``."""
    page.goto(url + path)
    page.locator("input[name=username]").fill(username)
    page.locator("input[name=password]").fill(password)
    page.locator("button[type=submit]").click()
    page.wait_for_url(f"**{path}", timeout=60_000)
    page.wait_for_load_state("networkidle")


def open_trigger_form(page: Page, url: str, dag_id: str) -> Locator:
    """The DAG's page, then its Trigger button: the form's dialog."""
    if not page.url.endswith(f"/dags/{dag_id}"):
        page.goto(f"{url}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_test_id("trigger-dag-submit").wait_for()
    return dialog


def open_section(dialog: Locator, name: str) -> None:
    trigger = dialog.get_by_role("button", name=name, exact=True)
    if trigger.get_attribute("aria-expanded") != "true":
        trigger.click()


def pick(dialog: Locator, param: str, option: str) -> None:
    """Choose the option whose label starts with ``option`` in an enum param's drop-down."""
    dialog.locator(f"div:has(> input[name=element_{param}])").get_by_role("combobox").click()
    dialog.page.get_by_role("option", name=option).first.click()


def number_input(dialog: Locator, param: str) -> Locator:
    control = dialog.locator(f"[id='number-input:element_{param}:inc']")
    return dialog.locator(f"[id='{control.get_attribute('aria-controls')}']")


def set_number(dialog: Locator, param: str, value: int) -> None:
    field = number_input(dialog, param)
    field.fill(str(value))
    field.blur()


def set_text(dialog: Locator, param: str, value: str) -> None:
    dialog.locator(f"[name=element_{param}]").fill(value)


def submit(dialog: Locator) -> None:
    dialog.get_by_test_id("trigger-dag-submit").click()
