"""`datacure serve` in a real headless Chromium (Debian `chromium` and `chromium-driver`, driven
by Selenium): open the app on a seeded store, filter, open a row, accept a flag and find the
`reviews` row; a keyboard decision; a script in user text is shown, never run; no console
error; a screenshot saved as a test artifact.

Chromium is installed by `make browser`, never by a test. When it (or chromedriver, or selenium)
is missing the tests skip, saying why, unless CI or DATACURE_REQUIRE_BROWSER=1 is set: then they
fail, so a CI run cannot pass without having run them.
"""

from __future__ import annotations

import shutil

import pytest
from test_browser import FLAGS, _find, browser_required
from test_serve import SCRIPT, Client, seed_serve_store

from datacure.serve import serve


def _missing(msg: str):
    if browser_required():
        pytest.fail(msg + " [CI or DATACURE_REQUIRE_BROWSER=1 is set, so this is a failure]")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-browser")
    seeded = seed_serve_store(tmp / "b.duckdb")
    h = serve(seeded["path"], port=0, background=True)
    yield {**seeded, "url": h.url, "tmp": tmp}
    h.stop()


@pytest.fixture(scope="module")
def driver(app):
    chromium = _find()
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        _missing("headless Chromium and chromedriver are not installed: run `make browser`")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed: `pip install -e .[test]`")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for f in FLAGS:
        if not f.startswith(("--enable-logging", "--v=")):
            opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={app['tmp'] / 'profile'}")
    opts.add_argument("--window-size=1280,1000")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def _wait(drv, cond, timeout=60):
    """Poll `cond` until true or the deadline. A page that reloads meanwhile (a decision on a
    row page reloads it) turns elements stale or missing for a moment: keep polling."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        drv,
        timeout,
        poll_frequency=0.05,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(cond)


def _ready(drv):
    _wait(drv, lambda d: d.execute_script("return document.body.dataset.ready") == "1")


def _reviews(app) -> dict:
    """The `reviews` table, read through the app's own SQL API (opening the file here could meet
    a request in flight, and DuckDB refuses two configurations in one process)."""
    st, _, d = Client(app["url"]).post(
        "/api/sql", {"query": "SELECT row_id, auditor, decision FROM reviews", "limit": 500}
    )
    assert st == 200, d
    return {(r, a): dec for r, a, dec in d["rows"]}


def _console_errors(drv) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]


def test_filter_open_a_row_and_accept(driver, app, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(app["url"] + "issues")
    _ready(driver)
    Select(driver.find_element(By.NAME, "auditor")).select_by_value("label")
    Select(driver.find_element(By.NAME, "split")).select_by_value("train")
    driver.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    _wait(driver, lambda d: "auditor=label" in d.current_url and "split=train" in d.current_url)
    _ready(driver)
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.flag")
    assert rows and {r.get_attribute("data-auditor") for r in rows} == {"label"}
    first = int(rows[0].get_attribute("data-row-id"))
    rows[0].find_element(By.CSS_SELECTOR, "a.open").click()
    _wait(driver, lambda d: d.current_url.endswith(f"/rows/{first}"))
    _ready(driver)
    card = driver.find_element(By.CSS_SELECTOR, ".flagcard[data-auditor=label]")
    assert card.find_elements(By.CSS_SELECTOR, ".sugg")  # the suggested label is shown
    assert len(driver.find_elements(By.CSS_SELECTOR, "table.neighbours tbody tr")) == 10
    card.find_element(By.CSS_SELECTOR, "button[data-decision=accept]").click()
    _wait(driver, lambda d: "accept" in d.find_element(By.ID, "reviews").text)
    assert _reviews(app)[(first, "label")] == "accept"
    shot = tmp_path / "serve-row.png"
    driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert _console_errors(driver) == []


def test_keyboard_reject_and_bulk_controls(driver, app, tmp_path):
    from selenium.webdriver.common.by import By

    driver.get(app["url"] + "issues?auditor=label&reviewed=no")
    _ready(driver)
    row = driver.find_elements(By.CSS_SELECTOR, "tr.flag")[0]
    key = (int(row.get_attribute("data-row-id")), "label")
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys("j")
    _wait(driver, lambda d: d.switch_to.active_element == row)
    row.send_keys("r")
    _wait(driver, lambda d: "saved: reject" in d.find_element(By.ID, "dc-status").text)
    assert _reviews(app)[key] == "reject"
    assert "reject" in row.find_element(By.CSS_SELECTOR, ".decision").text
    assert driver.find_element(By.ID, "bulk").is_displayed()
    shot = tmp_path / "serve-issues.png"
    driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert _console_errors(driver) == []


def test_script_in_user_text_is_shown_not_run(driver, app):
    from selenium.webdriver.common.by import By

    driver.get(app["url"] + f"rows/{app['script_row']}")
    _ready(driver)
    assert driver.find_element(By.ID, "row-text").text == SCRIPT
    assert driver.execute_script("return window.__pwned") is None
    driver.get(app["url"] + "issues?q=__pwned")
    _ready(driver)
    assert SCRIPT[:20] in driver.find_element(By.ID, "flags").text
    assert driver.execute_script("return window.__pwned") is None


def test_sql_console_and_map(driver, app):
    from selenium.webdriver.common.by import By

    driver.get(app["url"] + "sql")
    _ready(driver)
    box = driver.find_element(By.ID, "sql-query")
    box.clear()
    box.send_keys("SELECT row_id, text FROM samples ORDER BY row_id")
    driver.find_element(By.ID, "sql-run").click()
    _wait(driver, lambda d: d.find_element(By.ID, "sql-result").get_attribute("data-rows") == "100")
    assert driver.find_element(By.ID, "sql-next").is_displayed()
    driver.get(app["url"] + "map")
    _ready(driver)
    _wait(driver, lambda d: d.find_element(By.ID, "map").get_attribute("data-points") == "600")
    assert _console_errors(driver) == []
