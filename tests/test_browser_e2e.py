"""The feature browser in a real browser: `streamlit run` on a free localhost port, Debian's headless Chromium
driven by selenium (its chromedriver: nothing is downloaded). Skipped when Chromium is missing, except under
INTERP_REQUIRE_BROWSER=1 (set by .ci/run), where its absence fails the run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_features import shared_toy_cache

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
APP = Path(__file__).resolve().parent.parent / "apps" / "feature_browser.py"
SCREENS = Path("/tmp/browser_screens")

HAVE_BROWSER = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
NEEDS = "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
if not HAVE_BROWSER and os.environ.get("INTERP_REQUIRE_BROWSER") == "1":  # CI: a missing browser is a failure
    raise RuntimeError(f"INTERP_REQUIRE_BROWSER=1 but the real-browser test {NEEDS}")
pytestmark = pytest.mark.skipif(not HAVE_BROWSER, reason=NEEDS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free localhost port over a toy cache; stopped (only this process) at the end."""
    cache = shared_toy_cache(tmp_path_factory)
    port = free_port()
    env = dict(os.environ, INTERP_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log_path = tmp_path_factory.mktemp("e2e_log") / "streamlit.log"
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 60
            while time.time() < deadline:  # bounded wait for the health endpoint
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                        break
                except OSError:
                    time.sleep(0.3)
            else:
                pytest.fail(f"streamlit did not start on {url}; see {log_path}")
            yield url
        finally:
            proc.terminate()  # only the server this fixture started
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1500,2000"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, css: str, timeout: float = 60.0) -> list:
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"nothing matches {css!r} after {timeout} s")


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / name)
    return path


def test_feature_page_in_chromium(server, browser, tmp_path):
    """Open a feature: tokens are highlighted with their value on hover, and the histogram is drawn."""
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/?page=Feature&feature=5")
    tokens = wait_for(browser, "span.fb-tok")
    shaded = [t for t in tokens if "background-color" in (t.get_attribute("style") or "")]
    assert shaded, "no token is shaded by its activation"
    assert all(float(t.get_attribute("title")) >= 0 for t in tokens[:50])  # the value shown on hover
    assert browser.find_elements(By.CSS_SELECTOR, "span.fb-peak")
    wait_for(browser, ".js-plotly-plot .bars, .js-plotly-plot .barlayer")  # the histogram's bars are drawn
    assert "Feature 5" in browser.find_element(By.TAG_NAME, "body").text
    time.sleep(1.0)  # let plotly finish its transition before the picture
    assert screenshot(browser, tmp_path, "feature_page.png").stat().st_size > 10_000


def test_table_page_and_click_through(server, browser, tmp_path):
    """The features table renders; a similar-feature button opens another feature."""
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/?page=Features")
    wait_for(browser, "[data-testid='stDataFrame']")
    wait_for(browser, ".js-plotly-plot")  # the density plot, last on the page
    time.sleep(1.0)
    screenshot(browser, tmp_path, "features_table.png")
    browser.get(f"{server}/?page=Feature&feature=2")
    wait_for(browser, "span.fb-tok")
    deadline, similar = time.time() + 30, []
    while not similar and time.time() < deadline:  # the similar-feature buttons render after the examples
        similar = [b for b in browser.find_elements(By.CSS_SELECTOR, "button") if b.text.startswith("#")]
        time.sleep(0.25)
    button = similar[0]
    target = button.text.split(" ")[0][1:]
    browser.execute_script("arguments[0].scrollIntoView(); arguments[0].click();", button)
    deadline = time.time() + 30
    while (
        time.time() < deadline and f"Feature {target}" not in browser.find_element(By.TAG_NAME, "body").text
    ):
        time.sleep(0.25)
    assert f"Feature {target}" in browser.find_element(By.TAG_NAME, "body").text
