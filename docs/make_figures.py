"""Regenerate the README's pictures from the notebooks' run on the default model.

    python notebooks/run.py 02_feature_discovery      # fits and indexes SNMF (with a hierarchy), TopK, MP-SAE
    pip install -e ".[dev]"                           # selenium
    python docs/make_figures.py                       # -> docs/browser.png, docs/hierarchy.png

- `docs/browser.png`: the feature browser's page of one feature (Streamlit on a free localhost port, Debian's
  headless Chromium driven by selenium; apt-get install chromium chromium-driver);
- `docs/hierarchy.png`: the SNMF hierarchy as a sunburst (interp.display.hierarchy_sunburst), drawn by plotly.js
  in the same Chromium.

Both are written as 256-colour PNGs to keep them small.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
APP = ROOT / "apps" / "feature_browser.py"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def find_snmf_index(root: Path) -> Path:
    """The newest index of an SNMF decomposer with a hierarchy under `root`."""
    from interp.features import find_indexes

    rows = [r for r in find_indexes(root) if r["method"] == "snmf" and not r["error"]]
    rows = [r for r in rows if (Path(r["path"]) / "hierarchy.json").exists()] or rows
    if not rows:
        raise SystemExit(
            f"no SNMF feature index under {root}; run `python notebooks/run.py 02_feature_discovery`"
        )
    return max((Path(r["path"]) for r in rows), key=lambda p: (p / "manifest.json").stat().st_mtime)


def pick_feature(index) -> int:
    """A readable feature: the strongest among those firing on fewer than 10% of tokens."""
    table = index.table
    rare = table[(table["count"] > 0) & (table["density"] < 0.1)]
    return int(
        (rare if len(rare) else table).sort_values("max_activation", ascending=False)["feature"].iloc[0]
    )


def save_small_png(png: bytes, path: Path) -> None:
    """Write `png` as a 256-colour PNG."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--window-size=1400,1050", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(driver, css: str, timeout: float = 60.0) -> None:
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while not driver.find_elements(By.CSS_SELECTOR, css):
        if time.time() > deadline:
            raise SystemExit(f"nothing matches {css!r} after {timeout:.0f} s")
        time.sleep(0.3)


def hierarchy_png(index, out: Path) -> None:
    """The sunburst as a self-contained HTML page (plotly.js inline: no network), pictured by Chromium."""
    import tempfile

    from selenium.webdriver.common.by import By

    from interp.browser.display import hierarchy_sunburst, top_token_labels

    m = index.manifest
    fig = hierarchy_sunburst(index.hierarchy, labels=top_token_labels(index.table, n=2),
                             title=f"SNMF hierarchy of {m.model} {m.site}, levels {index.hierarchy['levels']}")  # fmt: skip
    fig.update_layout(height=640, width=640, font={"size": 10})
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "hierarchy.html"
        fig.write_html(page, include_plotlyjs=True, config={"displayModeBar": False})
        driver = chromium()
        try:
            driver.get(page.as_uri())
            wait_for(driver, ".js-plotly-plot .sunburstlayer path")
            time.sleep(1.0)
            save_small_png(driver.find_element(By.CSS_SELECTOR, ".js-plotly-plot").screenshot_as_png, out)
        finally:
            driver.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_png(index, feature: int, out: Path) -> None:
    """Serve the browser over this one index and take a picture of the feature's page."""
    port = free_port()
    env = dict(os.environ, INTERP_CACHE=str(index.path.parent), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port), "--server.address",
           "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal", "--theme.base", "light"]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    driver = None
    try:
        deadline = time.time() + 60
        while True:  # bounded wait for the server
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit(f"streamlit did not start on {url}") from None
                time.sleep(0.3)
        driver = chromium()
        driver.get(f"{url}/?page=Feature&feature={feature}")
        wait_for(driver, ".js-plotly-plot .barlayer")  # the histogram is drawn last
        time.sleep(2.0)  # let plotly finish its transition
        save_small_png(driver.get_screenshot_as_png(), out)
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()  # only the server this script started
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default=str(ROOT / "cache" / "notebooks"), help="where the notebooks wrote")
    parser.add_argument("--feature", type=int, help="feature shown in the browser picture (default: picked)")
    args = parser.parse_args()
    from interp.features import FeatureIndex

    index = FeatureIndex.open(find_snmf_index(Path(args.runs)))
    print(f"index: {index.path}")
    hierarchy_png(index, DOCS / "hierarchy.png")
    browser_png(
        index, args.feature if args.feature is not None else pick_feature(index), DOCS / "browser.png"
    )


if __name__ == "__main__":
    main()
