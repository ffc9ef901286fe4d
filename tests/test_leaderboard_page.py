"""The leaderboard page in a real headless browser (Debian's chromium + chromedriver, via selenium).

Skipped only when chromium is not installed and CI is not set; in CI (CI=true) a missing browser
fails. The screenshot is written to this test's pytest tmp dir (printed, and recorded as the
``screenshot`` property in junit output); set FALSEDEMO_SCREENSHOT to also copy it to a path.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

import numpy as np

from lm_eval_false_demos import leaderboard
from lm_eval_false_demos.core.datasets import MAIN_DATASETS
from test_leaderboard import random_scores, write_sweep

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
    banded = output / "banded"  # a row with per-query scores: intervals and layer bands
    rng = np.random.default_rng(1)
    tasks = {}
    for dataset in MAIN_DATASETS:
        correct, gold = random_scores(rng, 16, 6, 3, 2.0)
        permuted = correct.copy()
        permuted[:, 4:] = random_scores(rng, 16, 1, 3, 0.0)[0][:, :1].repeat(3, axis=1)
        tasks[f"falsedemo_{dataset}_correct"] = (dataset, "correct", correct, gold)
        tasks[f"falsedemo_{dataset}_permuted"] = (dataset, "permuted", permuted, gold, (gold + 1) % 3)
        tasks[f"falsedemo_{dataset}_zeroshot"] = (dataset, "zeroshot", random_scores(rng, 16, 6, 3, 1.0)[0], gold)
    write_sweep(banded / "sweep_banded", tasks, model="banded-model", layers=6)
    _, paths = leaderboard.build([FIXTURES, banded], output / "site", bootstrap_iters=100)
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
    assert len(column_texts(driver, "model")) == 5


def test_default_view_is_small_and_sorted_by_the_gap(page):
    driver, _ = page
    headers = driver.execute_script(
        "return Array.from(document.querySelectorAll('#leaderboard th')).map(function (h) { return h.dataset.key; });")
    assert headers == list(leaderboard.columns.DEFAULT_KEYS)
    gaps = [float(text.split()[0]) for text in column_texts(driver, "gap_permuted")]
    protocols = driver.execute_script(
        "return Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(function (r) {"
        " var p = r.querySelector('.protocol'); return p ? p.textContent : ''; });")
    # rows are grouped by protocol (never ranked across protocols) and sorted by the gap within a group
    groups = [protocol for index, protocol in enumerate(protocols) if index == 0 or protocols[index - 1] != protocol]
    assert len(groups) == len(set(groups))
    for group in groups:
        within = [gap for gap, protocol in zip(gaps, protocols) if protocol == group]
        assert within == sorted(within, reverse=True)
    banded = next(text for text in column_texts(driver, "gap_permuted") if "[" in text)
    assert re.fullmatch(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", banded)  # the gap with its interval


def test_hostile_model_name_is_text(page):
    driver, _ = page
    assert any(HOSTILE_MODEL in text for text in column_texts(driver, "model"))
    counts = driver.execute_script(
        "return [document.scripts.length, document.images.length, window.__pwned === undefined];")
    assert counts == [2, 0, True]


def test_clicking_a_header_sorts_rows(page):
    driver, _ = page
    click_header(driver, "permuted_acc")  # numbers: largest first
    firsts = [text.split()[0] for text in column_texts(driver, "permuted_acc")]
    assert [float(value) for value in firsts] == sorted((float(value) for value in firsts), reverse=True)
    click_header(driver, "permuted_acc")  # second click reverses
    assert [text.split()[0] for text in column_texts(driver, "permuted_acc")] == sorted(firsts, key=float)
    click_header(driver, "critical_layer")  # sorted by the layer index; blanks stay last
    critical = column_texts(driver, "critical_layer")
    assert critical[0] and critical[-1] == "" and critical[0].split()[0] in ("8", "4", "5")


def test_a_model_link_opens_its_detail_with_bars_and_banded_curves(page, record_property):
    from selenium.webdriver.common.by import By

    driver, output = page
    driver.set_window_size(1400, 1000)
    link = next(a for a in driver.find_elements(By.CSS_SELECTOR, "a.detail-link") if a.text == "banded-model")
    detail_id = link.get_attribute("href").rsplit("#", 1)[1]
    assert not driver.find_element(By.ID, detail_id).get_property("open")
    link.click()
    detail = driver.find_element(By.ID, detail_id)
    assert detail.get_property("open")
    bars = detail.find_elements(By.CSS_SELECTOR, "figure.bars rect.bar")
    assert len(bars) == 28 and all(bar.size["width"] > 1 for bar in bars)  # 14 datasets x 2 settings
    bands = detail.find_elements(By.CSS_SELECTOR, "figure.curves polygon.band")
    assert len(bands) == 2 and all(band.size["height"] > 2 for band in bands)
    def curve_lengths(figure):
        return driver.execute_script(
            f"return Array.from(arguments[0].querySelectorAll('figure.{figure} polyline.curve')).map(function (l) {{"
            " return l.getTotalLength(); });", detail)

    lengths = curve_lengths("curves")
    assert len(lengths) == 2 and all(length > 50 for length in lengths)
    # the second view of the critical layer: prior alignment and follow rate over layers, banded
    assert len(curve_lengths("prediction-curves")) == 2 and all(length > 50 for length in curve_lengths("prediction-curves"))
    bands = detail.find_elements(By.CSS_SELECTOR, "figure.prediction-curves polygon.band")
    assert len(bands) == 2 and all(band.size["height"] > 2 for band in bands)
    assert "prior alignment" in detail.find_element(By.CSS_SELECTOR, "figure.prediction-curves").text
    assert "few-shot seed" in detail.text and "1234" in detail.text
    shot = output / "leaderboard_detail.png"
    assert detail.screenshot(str(shot)) and shot.stat().st_size > 5_000
    record_property("screenshot_detail", str(shot))


@pytest.mark.parametrize("width, height, name", [(390, 844, "phone"), (1366, 900, "desktop")])
def test_page_fits_phone_and_desktop_widths(page, record_property, width, height, name):
    from PIL import Image

    driver, output = page
    driver.set_window_size(width, height)
    driver.execute_script("window.scrollTo(0, 0);")
    inner, scroll = driver.execute_script("return [window.innerWidth, document.documentElement.scrollWidth];")
    assert scroll <= inner  # nothing pushes the page sideways; a wide table scrolls inside its box
    visible = driver.execute_script(
        "return Array.from(document.querySelectorAll('#leaderboard th')).filter(function (h) {"
        " return h.offsetParent !== null; }).map(function (h) { return h.dataset.key; });")
    assert {"model", "gap_permuted", "permuted_acc", "critical_layer"} <= set(visible)
    if name == "phone":
        assert "parameters" not in visible
        table = driver.execute_script(
            "var r = document.getElementById('leaderboard').getBoundingClientRect(); return r.right;")
        assert table <= inner + 1  # the phone's columns fit its width
    shot = output / f"leaderboard_{name}.png"
    assert driver.save_screenshot(str(shot))
    image = Image.open(shot)
    assert image.size[0] >= width * 0.9 and shot.stat().st_size > 10_000
    if os.environ.get("FALSEDEMO_SCREENSHOT"):
        shutil.copyfile(shot, f"{os.environ['FALSEDEMO_SCREENSHOT']}.{name}.png")
    record_property(f"screenshot_{name}", str(shot))
    print(f"leaderboard page screenshot ({name}): {shot}")
