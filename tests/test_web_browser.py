"""The web view in a real browser (Debian's Chromium through Playwright): the on-call path from
the runs list to a resumed run completing live, escaping of hostile data, and the token."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import browser_kit
import pytest

import ironflow
from ironflow import Engine, NonRetryableError, step
from ironflow.runtime import registry

pytestmark = pytest.mark.browser

HOSTILE = "<img src=x onerror=window.__pwned=1>"
FIXED = threading.Event()  # "the code fix": the charge step fails until it is set


def lookup(order: Any) -> dict[str, Any]:
    return {"order": order, "total": 42}


def reserve(item: str) -> str:
    return f"reserved {item}"


def charge(total: int) -> dict[str, Any]:
    if not FIXED.is_set():
        raise NonRetryableError(f"card declined {HOSTILE}")
    return {"charged": total}


@ironflow.function(id="checkout", on="order.placed")
def checkout(ctx: Any) -> Any:
    order = yield step.run("lookup", lookup, ctx.event.data)
    yield step.parallel(
        "reserve",
        [lambda s: s.run("book", reserve, "book"), lambda s: s.run("pen", reserve, "pen")],
    )
    paid = yield step.run("charge", charge, order["total"])
    return paid


@ironflow.function(id="greet", on="user.created")
def greet(ctx: Any) -> Any:
    text = yield step.run("hello", lambda name: f"hello {name}", ctx.event.data["name"])
    return text


@pytest.fixture
def browser() -> Iterator[Any]:
    browser_kit.require_browser()
    with browser_kit.chromium() as found:
        yield found


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    FIXED.clear()
    engine = Engine(str(tmp_path / "web.db"), poll="0.1s")
    engine.register(checkout)
    engine.register(greet)
    try:
        yield engine
    finally:
        engine.close()


def _failed_and_completed(engine: Engine) -> tuple[str, str]:
    [failed] = engine.emit("order.placed", {"sku": HOSTILE})
    [done] = engine.emit("user.created", {"name": "ada"})
    engine.run_until_idle()
    assert engine.get_run(failed).status == "failed"
    assert engine.get_run(done).status == "completed"
    return failed, done


def test_failed_run_found_in_the_list_resumed_after_the_fix_completes_live(
    engine: Engine, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    failed, _ = _failed_and_completed(engine)
    with browser_kit.serving(engine) as url, browser_kit.working(engine):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/")
        rows = page.locator("#runs tr[data-run]")
        expect(rows).to_have_count(2)

        page.select_option("#filter-status", "failed")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-run", failed)
        assert page.url.endswith("/?status=failed")
        list_png = tmp_path / "list.png"
        page.screenshot(path=str(list_png), full_page=True)

        rows.first.locator("a").click()
        page.wait_for_url(re.compile(r"/runs/"))
        expect(page.locator("#run-id")).to_have_text(failed)
        expect(page.locator("#run-status")).to_have_attribute("data-status", "failed")
        expect(page.locator("#run-error .error-type")).to_have_text(
            "ironflow.errors.NonRetryableError"
        )
        expect(page.locator("#run-error .error-message")).to_have_text(f"card declined {HOSTILE}")
        timeline = page.locator("#timeline")
        for step_id, status in [
            ("lookup", "completed"),
            ("reserve", "completed"),
            ("reserve/0/book", "completed"),
            ("reserve/1/pen", "completed"),
            ("charge", "failed"),
        ]:
            expect(timeline.locator(f'[data-step="{step_id}"]')).to_have_attribute(
                "data-status", status
            )
        # Branches are nested under their parallel.
        indent = timeline.locator('[data-step="reserve/0/book"] .g-name')
        assert indent.evaluate("e => parseInt(e.style.paddingLeft)") > 8
        timeline.locator('[data-step="charge"] .g-name').click()
        expect(timeline.locator(".attempts tbody tr")).to_have_count(1)
        expect(timeline.locator(".traceback").first).to_contain_text("Traceback")
        run_png = tmp_path / "run.png"
        page.screenshot(path=str(run_png), full_page=True)

        FIXED.set()  # the fix is deployed
        page.evaluate("window.__same_page = true")
        page.click("#resume")
        expect(page.locator("#confirm")).to_be_visible()
        expect(page.locator("#confirm-text")).to_contain_text(failed)
        page.click("#confirm-ok")
        expect(page.locator("#run-status")).to_have_attribute(
            "data-status", "completed", timeout=15_000
        )
        expect(timeline.locator('[data-step="charge"]')).to_have_attribute(
            "data-status", "completed"
        )
        assert page.evaluate("window.__same_page") is True  # live: the page was not reloaded
        assert page.evaluate("window.__pwned") is None

    assert engine.get_run(failed).status == "completed"
    assert engine.get_run(failed).output == {"charged": 42}
    for png in (list_png, run_png):
        # A real rendering, not a blank page: a blank or single-colour frame has a handful.
        assert browser_kit.pixel_colours(browser, png.read_bytes()) > 200, png


def test_hostile_data_and_errors_are_shown_as_text(engine: Engine, browser: Any) -> None:
    from playwright.sync_api import expect

    failed, _ = _failed_and_completed(engine)
    engine.emit("audit", {"note": HOSTILE})
    with browser_kit.serving(engine) as url:
        page = browser.new_page()
        page.goto(f"{url}/runs/{failed}")
        expect(page.locator("#run-error .error-message")).to_have_text(f"card declined {HOSTILE}")
        expect(page.locator("main")).to_contain_text(
            '"sku": "<img src=x onerror=window.__pwned=1>"'
        )
        page.locator('[data-step="lookup"] .g-name').click()
        expect(page.locator(".g-detail")).to_contain_text(HOSTILE)  # the step's output
        assert page.locator("main img").count() == 0
        page.goto(f"{url}/events")
        expect(page.locator("#events tr[data-event]")).to_have_count(3)
        expect(page.locator("#events")).to_contain_text(HOSTILE)
        assert page.locator("main img").count() == 0
        assert page.evaluate("window.__pwned") is None

        page.goto(f"{url}/functions")
        row = page.locator('#functions tr[data-function="checkout"]')
        expect(row).to_contain_text("order.placed")
        expect(row).to_contain_text(registry.code_version(checkout))
        worker = page.locator(f'#workers tr[data-worker="{engine.worker_id}"]')
        expect(worker).to_contain_text(f"greet {registry.code_version(greet)}")


def test_token_is_asked_once_and_sent_as_a_bearer_header(engine: Engine, browser: Any) -> None:
    from playwright.sync_api import expect

    failed, _ = _failed_and_completed(engine)
    with browser_kit.serving(engine, token="s3cret-token") as url:
        page = browser.new_page()
        sent: list[str | None] = []
        page.on(
            "request",
            lambda request: (
                sent.append(request.headers.get("authorization"))
                if "/api/" in request.url
                else None
            ),
        )
        page.goto(url + "/")
        expect(page.locator("#token")).to_be_visible()
        page.fill("#token-input", "wrong")
        page.click("#token-ok")
        expect(page.locator("#token-error")).to_contain_text("refused")
        page.fill("#token-input", "s3cret-token")
        page.click("#token-ok")
        expect(page.locator("#runs tr[data-run]")).to_have_count(2)
        page.goto(f"{url}/runs/{failed}")  # another page, same tab: not asked again
        expect(page.locator("#run-status")).to_have_attribute("data-status", "failed")
        expect(page.locator("#token")).not_to_be_visible()
        assert sent[-1] == "Bearer s3cret-token"
        assert page.context.cookies() == []  # nothing a cross-site request could ride on


def test_fork_from_a_step_and_rerun_open_the_new_run_linked_to_its_source(
    engine: Engine, browser: Any
) -> None:
    from playwright.sync_api import expect

    failed, _ = _failed_and_completed(engine)
    FIXED.set()
    with browser_kit.serving(engine) as url, browser_kit.working(engine):
        page = browser.new_page()
        page.goto(f"{url}/runs/{failed}")
        page.locator('[data-step="charge"] .g-name').click()
        page.click('[data-fork="charge"]')
        expect(page.locator("#confirm-text")).to_contain_text("charge")
        page.click("#confirm-ok")
        page.wait_for_url(lambda address: failed not in address)
        forked = page.locator("#run-id").inner_text()
        expect(page.locator("#run-status")).to_have_attribute(
            "data-status", "completed", timeout=15_000
        )
        expect(page.locator("main")).to_contain_text(f"source{failed}")

        page.click("#rerun")
        page.click("#confirm-ok")
        page.wait_for_url(lambda address: forked not in address)
        rerun = page.locator("#run-id").inner_text()
        expect(page.locator("#run-status")).to_have_attribute(
            "data-status", "completed", timeout=15_000
        )

    assert engine.get_run(forked).source_run_id == failed
    assert engine.get_run(rerun).source_run_id == forked
    assert engine.get_run(forked).output == {"charged": 42}


def test_runs_list_pages_filters_by_function_and_time_and_finds_a_run_by_id(
    engine: Engine, browser: Any
) -> None:
    from playwright.sync_api import expect

    failed, _ = _failed_and_completed(engine)
    for n in range(52):
        engine.start("greet", {"name": f"n{n}"})
    engine.run_until_idle()
    with browser_kit.serving(engine) as url:
        page = browser.new_page()
        page.goto(url + "/")
        rows = page.locator("#runs tr[data-run]")
        expect(rows).to_have_count(50)  # 54 runs: 50 a page
        expect(page.locator("#newer")).to_be_disabled()
        page.click("#older")
        expect(rows).to_have_count(4)
        expect(page.locator("#older")).to_be_disabled()
        page.click("#newer")
        expect(rows).to_have_count(50)

        expect(page.locator('#filter-function option[value="checkout"]')).to_have_count(1)
        page.select_option("#filter-function", "checkout")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-run", failed)
        page.select_option("#filter-since", "15m")  # the runs just started are in it
        expect(rows).to_have_count(1)
        assert page.url.endswith("/?function=checkout&since=15m")

        page.fill("#search", "no-such-run")
        page.press("#search", "Enter")
        expect(page.locator("#search-note")).to_have_text("no run with id no-such-run")
        page.fill("#search", failed)
        page.press("#search", "Enter")
        page.wait_for_url(f"**/runs/{failed}")
        expect(page.locator("#run-id")).to_have_text(failed)
