"""The dashboard in a real headless browser, during a real running experiment.

Chromium (Debian's ``chromium`` and ``chromium-driver`` packages) driven by Selenium opens the
page while three LoRA SFT runs train on the shared Ray cluster, sees the runs, clicks stop on
one and sees its status change, submits a clone form and sees the new run appear; then the
experiment ends and the page turns read-only. Screenshots go to ``test-artifacts/`` (ignored
by git) and the test's tmp path.

Without a browser the test FAILS with how to install one (CI must run it), unless
``RF_RAY_SKIP_BROWSER=1`` is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policies.errors import OpError
from rf_ray import Experiment, List, NoPruning, RFModelConfig, RFSFTConfig
from rf_ray.dashboard.app import Settings
from rf_ray.dashboard.reads import Root
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset
from tests.rf_ray.test_dashboard_http import serve

pytestmark = pytest.mark.slow

ROWS = 480  # 240 optimizer steps per run: the experiment outlives the clicks (each op starts
# a process of its own) by far
WAIT_S = 240  # bound on each wait for the page (a slice on two loaded cores can take seconds)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
INSTALL = (
    "the dashboard's browser test needs Chromium, its driver and Selenium: "
    "`apt-get install -y chromium chromium-driver` (Debian; elsewhere any Chromium or Chrome "
    "with a matching chromedriver on PATH) and `pip install -e '.[dev]'` (selenium); "
    "or set RF_RAY_SKIP_BROWSER=1 to skip it on a machine without them"
)


def _browser_paths() -> tuple[str, str]:
    if os.environ.get("RF_RAY_SKIP_BROWSER") == "1":
        pytest.skip("RF_RAY_SKIP_BROWSER=1")
    binary = next(
        (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))),
        None,
    )
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail(f"selenium is not installed: {INSTALL}")
    if binary is None or driver is None:
        pytest.fail(f"no {'chromium' if binary is None else 'chromedriver'} on PATH: {INSTALL}")
    return binary, driver


@pytest.fixture
def browser() -> Iterator[Any]:
    binary, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1100"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _config() -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List([3e-3, 1e-3, 3e-4]),
            lora_rank=4,
            per_device_train_batch_size=2,
            num_train_epochs=1,
            max_length=48,
        ),
    )


def _screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(tmp_path / name))
    shutil.copyfile(tmp_path / name, ARTIFACTS / name)


def test_watch_stop_and_clone_in_a_real_browser(browser, ray_cluster, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    exp = Experiment("browser-sweep", experiment_path=tmp_path)
    exp.run_fit(
        _config(), train_dataset=sft_dataset(ROWS), num_chunks=8, seed=1, max_slice_steps=1,
        pruner=NoPruning(), live_view=False, blocking=False,
    )  # fmt: skip
    wait = WebDriverWait(browser, WAIT_S)
    row = "#runs tr[data-run-id='{}']"

    def text_of(selector: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, selector).text)

    try:
        with serve(Settings(root=Root.at(tmp_path))) as base:
            browser.get(base + "/")  # one experiment: the page opens it
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) == 3)
            assert text_of("#exp-badge") == "running"

            stop = wait.until(ec.element_to_be_clickable(
                (By.CSS_SELECTOR, row.format(1) + " button[data-op='stop']")))  # fmt: skip
            stop.click()
            wait.until(lambda d: text_of(row.format(1) + " td.status") == "stopped")
            assert "run 1: stop applied" in text_of("#message")

            browser.find_element(
                By.CSS_SELECTOR, row.format(2) + " button[data-op='clone']"
            ).click()
            rate = wait.until(ec.visibility_of_element_located(
                (By.CSS_SELECTOR, "#clone-fields input[name='learning_rate']")))  # fmt: skip
            assert rate.get_attribute("value") == "0.001"  # prefilled from run 2's knobs
            model = browser.find_element(By.CSS_SELECTOR, "#clone-fields input[name='model_name']")
            assert model.get_attribute("readonly") is not None  # what a clone keeps: read-only
            rate.clear()
            rate.send_keys("5e-4")
            browser.find_element(By.ID, "clone-submit").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row.format(4)))
            assert "← 2" in text_of(row.format(4) + " td:first-child")
            assert "cloned as run 4" in text_of("#message")
            learning_rates = {
                tr.get_attribute("data-run-id"): tr.find_elements(By.TAG_NAME, "td")[7].text
                for tr in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
            }  # the knob that differs, as its own column after "pruned@"
            assert learning_rates["4"] == "0.0005"

            # Curves: the chunk-metric chart draws once runs close their first chunk.
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-chunks polyline"))
            _screenshot(browser, tmp_path, "dashboard.png")

            for run_id in (2, 3, 4):  # end the experiment (run 1 is stopped)
                with contextlib.suppress(OpError):  # it completed meanwhile
                    exp.delete(run_id)
            exp.wait()
            wait.until(lambda d: "read-only" in text_of("#exp-badge"))
            buttons = browser.find_elements(By.CSS_SELECTOR, "#runs button")
            assert buttons
            assert not any(b.is_displayed() and b.is_enabled() for b in buttons)
            _screenshot(browser, tmp_path, "dashboard-finished.png")
    finally:
        exp.end()


def test_an_evals_experiment_shows_each_pipelines_interval_in_a_real_browser(browser, tmp_path):
    """A finished evals experiment (a store as the scheduler writes it; no Ray): the runs table
    judges each pipeline by its last shard's estimate and interval, not by a best shard."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.rf_ray.test_evals_progress import _two_pipelines

    _two_pipelines(tmp_path)
    wait = WebDriverWait(browser, WAIT_S)
    with serve(Settings(root=Root.at(tmp_path))) as base:
        browser.get(base + "/")  # one experiment: the page opens it
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) == 2)
        heads = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#runs thead th")]
        assert "exact_match [interval]" in heads
        assert "best exact_match" not in heads
        column = heads.index("exact_match [interval]")
        cells = {
            tr.get_attribute("data-run-id"): tr.find_elements(By.TAG_NAME, "td")[column].text
            for tr in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
        }
        assert cells == {"1": "0.2 [0.1, 0.3]", "2": "0.35 [0.25, 0.45]"}
