"""The leaderboard page in a real headless browser (Debian's chromium + chromedriver, via selenium).

Skipped only when chromium is not installed and CI is not set; in CI (CI=true) a missing browser
fails. The screenshot is written to this test's pytest tmp dir (printed, and recorded as the
``screenshot`` property in junit output); set FALSEDEMO_SCREENSHOT to also copy it to a path.
"""

import io
import os
import shutil
from pathlib import Path

import pytest

from lm_eval_false_demos import leaderboard

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "leaderboard"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
HOSTILE_MODEL = "<script>alert('pwned')</script>"
IN_CI = os.environ.get("CI", "").lower() == "true"


def find_browser():
    browser = next((shutil.which(name) for name in CHROMIUM_CANDIDATES if shutil.which(name)), None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    if browser and driver:
        return browser, driver
    reason = "chromium and chromedriver are needed for the page test: apt-get install chromium chromium-driver"
    if IN_CI:
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    browser, driver_path = find_browser()
    # selenium is in the test extras: missing it is a broken install, never a skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    output = tmp_path_factory.mktemp("leaderboard_page")
    _, paths = leaderboard.build([FIXTURES], output)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,1300",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path keeps selenium from looking for (downloading) a driver of its own.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.get(paths["html"].resolve().as_uri())
        yield driver, output
    finally:
        driver.quit()


def column_texts(driver, key):
    return driver.execute_script(
        "var header = document.querySelector('#leaderboard th[data-key=\"' + arguments[0] + '\"]');"
        "return Array.from(document.querySelectorAll('#leaderboard tbody tr'))"
        ".map(function (row) { return row.cells[header.cellIndex].textContent; });", key)


def click_header(driver, key):
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f'th[data-key="{key}"] button').click()


def test_page_loads_without_console_errors(page):
    driver, _ = page
    assert driver.title == "Overthinking leaderboard"
    messages = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert messages == []
    assert len(column_texts(driver, "model")) == 4


def test_hostile_model_name_is_text(page):
    driver, _ = page
    assert HOSTILE_MODEL in column_texts(driver, "model")
    counts = driver.execute_script(
        "return [document.scripts.length, document.images.length, window.__pwned === undefined];")
    assert counts == [2, 0, True]


def test_clicking_a_header_sorts_rows(page):
    driver, _ = page
    click_header(driver, "correct_acc")  # numbers: largest first
    assert column_texts(driver, "correct_acc") == ["0.680 (1/14)", "0.644 (5/14)", "0.550 (1/14)", "0.330 (1/14)"]
    assert column_texts(driver, "config")[0] == "dtype=float32,exit_layer=9"
    click_header(driver, "correct_acc")  # second click reverses
    assert [text.split()[0] for text in column_texts(driver, "correct_acc")] == ["0.330", "0.550", "0.644", "0.680"]
    click_header(driver, "critical_layer")  # blanks stay last
    assert column_texts(driver, "critical_layer") == ["8", "", "", ""]
    click_header(driver, "model")  # text: A to Z, in the browser's collation (case-insensitive)
    assert column_texts(driver, "model") == [
        HOSTILE_MODEL, "gemma-3-270m", "gemma-3-270m", "HuggingFaceTB/SmolLM2-135M"]


def test_curves_render_and_screenshot(page, record_property):
    from PIL import Image
    from selenium.webdriver.common.by import By

    driver, output = page
    figure = driver.find_element(By.CSS_SELECTOR, "figure.curves svg")
    size = figure.size
    assert size["width"] > 200 and size["height"] > 100
    lengths = driver.execute_script(
        "return Array.from(document.querySelectorAll('figure.curves polyline.curve'))"
        ".map(function (line) { return line.getTotalLength(); });")
    assert len(lengths) == 3 and all(length > 50 for length in lengths)
    # the plot's pixels: coloured curve strokes are drawn, not just an empty frame
    image = Image.open(io.BytesIO(figure.screenshot_as_png)).convert("RGB")
    pixels = image.tobytes()
    coloured = sum(1 for i in range(0, len(pixels), 3) if max(pixels[i:i + 3]) - min(pixels[i:i + 3]) > 60)
    assert coloured > 200
    # sorting clicks scrolled the wide table sideways: show it from its first column
    driver.execute_script("document.querySelector('.scroll').scrollLeft = 0; window.scrollTo(0, 0);")
    screenshot = output / "leaderboard_page.png"
    assert driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("FALSEDEMO_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["FALSEDEMO_SCREENSHOT"])
    record_property("screenshot", str(screenshot))
    print(f"leaderboard page screenshot: {screenshot}")
