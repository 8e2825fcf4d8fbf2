"""Open a report in headless Chromium (Selenium with the system's chromedriver) and check it.

Nothing is downloaded: Selenium Manager is kept offline (``SE_OFFLINE=true``) and given the
driver's path, and Chromium runs with a fresh profile and background networking off.
:func:`browser_or_skip` skips a test, with the reason, where Selenium, Chromium or
chromedriver is missing.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from propagate.video_writer import H264_MIME

#: ``HTMLMediaElement.HAVE_CURRENT_DATA``: the current frame can be shown.
HAVE_CURRENT_DATA = 2


def find_browser() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or why they cannot be used."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements.txt)"
    chromium = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        return ("no headless browser: the Debian packages chromium and chromium-driver provide /usr/bin/chromium "
                "and /usr/bin/chromedriver")
    return chromium, driver


@contextmanager
def browser_or_skip() -> Iterator[object]:
    """A headless Chromium WebDriver, quit at the end; skips the test where none can run."""
    found = find_browser()
    if isinstance(found, str):
        pytest.skip(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = found
    previous = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch a browser or driver
    profile = tempfile.mkdtemp(prefix="report-browser-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1280,1600", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        if previous is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = previous


def wait_for(driver, script: str, timeout: float = 20.0):
    """Poll a JavaScript expression (``return ...``) until it is truthy; returns its last value."""
    deadline = time.monotonic() + timeout
    value = driver.execute_script(script)
    while not value and time.monotonic() < deadline:
        time.sleep(0.1)
        value = driver.execute_script(script)
    return value


def column_values(driver, table_id: str, column: int) -> list[str]:
    return driver.execute_script(
        f"return Array.from(document.getElementById('{table_id}').tBodies[0].rows)"
        f".map(r => r.cells[{column}].dataset.value || r.cells[{column}].textContent)")


def check_report(driver, page: Path, screenshot: Path, table_id: str = "sequences") -> dict:
    """Open ``page`` (file://) and assert what a reader relies on; returns what was seen.

    Every ``<img>`` has loaded (``naturalWidth > 0``); every ``<video>``'s source type is
    accepted (``canPlayType`` is ``probably`` or ``maybe``) and the video reaches
    ``readyState >= HAVE_CURRENT_DATA`` without a media error, unless this Chromium plays no
    H.264 at all (builds without proprietary codecs: ``"h264"`` is False in what is returned,
    and the videos are left unchecked); with at least two rows, a click
    on the table's last header sorts the rows ascending by that column and a second click
    descending. Saves a screenshot.
    """
    driver.get(page.resolve().as_uri())
    assert wait_for(driver, "return document.readyState === 'complete'")
    images = driver.execute_script("return Array.from(document.images).map(i => [i.src, i.complete, "
                                   "i.naturalWidth])")
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert not broken, f"images that did not load: {broken}"

    types = driver.execute_script("return Array.from(document.querySelectorAll('video source'))"
                                  ".map(s => [s.type, document.createElement('video').canPlayType(s.type)])")
    h264 = driver.execute_script(f"return document.createElement('video').canPlayType('{H264_MIME}')")
    playable = h264 in ("probably", "maybe")
    refused = [(kind, answer) for kind, answer in types if answer not in ("probably", "maybe")]
    if playable:  # a Chromium built without H.264 refuses every report video; the caller says so
        assert not refused, f"video types the browser will not play: {refused}"
        for index in range(len(types)):
            state = wait_for(driver, f"var v = document.querySelectorAll('video')[{index}]; return (v.error ? -1 : "
                                     f"(v.readyState >= {HAVE_CURRENT_DATA} ? v.readyState : 0))")
            assert state and state >= HAVE_CURRENT_DATA, f"video {index} did not reach HAVE_CURRENT_DATA ({state})"

    rows = driver.execute_script(f"return document.getElementById('{table_id}').tBodies[0].rows.length")
    sorted_checked = False
    if rows >= 2:
        headers = driver.find_elements("css selector", f"#{table_id} th")
        column = len(headers) - 1
        headers[column].click()
        up = [float(v) for v in column_values(driver, table_id, column)]
        assert up == sorted(up), up
        headers[column].click()
        down = [float(v) for v in column_values(driver, table_id, column)]
        assert down == sorted(down, reverse=True), down
        assert headers[column].get_attribute("aria-sort") == "descending"
        sorted_checked = True
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 0
    return {"images": len(images), "videos": len(types), "rows": rows, "sorted": sorted_checked, "h264": playable}
