"""The review page in a real headless Chromium (Debian's chromium + chromium-driver,
which .ci/run installs): every picture and clip loads, the console stays clean, the
step cards, seams, films and timeline are there, and the problems filter works.
A screenshot of the whole page is kept in test-artifacts/report_html.png."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.runhelpers import (
    frames_step,
    only_run_dir,
    read_report,
    run_cli,
    write_pipeline,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "test-artifacts"
BROWSER_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,900",
                 "--autoplay-policy=no-user-gesture-required")

# Brings every lazy picture and poster in by scrolling, then loads every clip in full.
LOAD_EVERYTHING = """
const done = arguments[arguments.length - 1];
(async () => {
  const pause = (ms) => new Promise((r) => setTimeout(r, ms));
  for (let y = 0; y <= document.body.scrollHeight; y += 400) { window.scrollTo(0, y); await pause(30); }
  window.scrollTo(0, 0);
  const images = [...document.images];
  await Promise.all(images.map((img) => img.decode().catch(() => null)));
  const clips = [...document.querySelectorAll("video")];
  const posters = await Promise.all(clips.map((video) => {
    const poster = video.getAttribute("poster");
    if (!poster) { return Promise.resolve({poster: null, width: 0}); }
    const img = new Image(); img.src = poster;
    return img.decode().then(() => ({poster, width: img.naturalWidth}),
                             () => ({poster, width: 0}));
  }));
  await Promise.all(clips.map((video) => new Promise((resolve) => {
    if (video.readyState >= 2) { resolve(); return; }
    video.addEventListener("loadeddata", resolve, {once: true});
    video.addEventListener("error", resolve, {once: true});
    setTimeout(resolve, 15000);
    video.preload = "auto"; video.load();
  })));
  done({
    images: images.map((img) => ({src: img.getAttribute("src"), width: img.naturalWidth})),
    clips: clips.map((video, i) => ({src: video.getAttribute("src"), ready: video.readyState,
                                     width: video.videoWidth, error: video.error && video.error.code,
                                     poster: posters[i]})),
  });
})();
"""


@pytest.fixture
def run_dir(isolated: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A run with a chain, a moderated step, a skipped one, a film and an incomplete film."""
    path = write_pipeline(isolated / "p", "review", [
        frames_step("open", "a quiet harbour at dawn"),
        frames_step("follow", "boats leave the harbour", image="${steps.open.last_frame}"),
        frames_step("bad", "a forbidden scene"),
        frames_step("after", "what the bad shot led to", image="${steps.bad.last_frame}"),
        frames_step("moon", "the moon over the sea", image="${inputs.moon}"),
    ], accounts={"main": ("main@example.com", 1)})
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["outputs"] = {"harbour": {"concat": ["open", "follow", "moon"]},
                           "cut": {"concat": ["open", "bad", "after"]}}
    document["defaults"] = {"account": "main"}
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    code, out, err = run_cli(["run", str(path), "--sim", "--sim-speed", "20",
                              "--out", str(isolated / "runs")], capsys)
    assert code == 1, out + err  # bad is moderated
    return only_run_dir(isolated / "runs", "review")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing: .ci/run installs them")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _save_screenshot(driver: Any, name: str) -> Path:
    """The whole page, as tall as it is (Chromium caps a screenshot at 16,384 px)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 100, 16384))
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    driver.save_screenshot(str(target))
    return target


def test_the_review_page_loads_everything_in_a_real_browser(run_dir: Path, browser: Any) -> None:
    report = read_report(run_dir)
    browser.get((run_dir / "report.html").resolve().as_uri())

    loaded = browser.execute_async_script(LOAD_EVERYTHING)
    console = browser.get_log("browser")
    count = browser.execute_script
    screenshot = _save_screenshot(browser, "report_html.png")

    assert loaded["images"], "the page shows frames"
    assert [i for i in loaded["images"] if i["width"] == 0] == []
    succeeded = [s for s in report["steps"] if s["status"] == "succeeded"]
    assert len(loaded["clips"]) == len(succeeded) + 1  # every clip, and the one film made
    for clip in loaded["clips"]:
        assert clip["error"] is None and clip["ready"] >= 2 and clip["width"] > 0, clip
        assert clip["poster"]["width"] > 0, clip
    assert [entry for entry in console if entry["level"] == "SEVERE"] == []

    assert count("return document.querySelectorAll('article.card').length") == 5
    assert count("return document.querySelectorAll('article.card.failed').length") == 1
    assert count("return document.querySelectorAll('article.card.skipped').length") == 1
    assert count("return document.querySelectorAll('#seams .seam').length") == 2
    assert count("return document.querySelectorAll('#seams .seam.warn').length") == 0
    assert count("return document.querySelectorAll('#films video').length") == 1
    assert count("return document.querySelectorAll('.film.incomplete').length") == 1
    assert count("return document.querySelectorAll('#timeline .row').length") == 5
    assert count("return document.querySelectorAll('#timeline .track .waiting').length") >= 1
    lanes = count("return [...document.querySelectorAll('#timeline .lane h3')]"
                  ".map((h) => h.textContent)")
    assert lanes[0].startswith("main 4 steps; at most 1 in flight; "), lanes  # max_jobs 1

    browser.find_element("css selector", "[data-filter=problems]").click()
    shown = count("return [...document.querySelectorAll('article.card')]"
                  ".filter((c) => c.offsetParent !== null).map((c) => c.id)")
    assert shown == ["step-bad", "step-after"]
    assert screenshot.stat().st_size > 10_000
    shutil.copyfile(screenshot, run_dir / "screenshot.png")  # beside the page, for a look
