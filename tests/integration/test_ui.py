"""The status page (/ui) in a real browser: headless Chromium driven by Selenium against a
real 3-node cluster.  The page shows the nodes and VDIs that exist (one attached over NBD),
a killed node's row turns to down, and recovery of the new epoch shows.  A screenshot is
saved as a test artifact (``$SHEEPDOG_TEST_ARTIFACTS``, else ``<repo>/test-artifacts/``).

Chromium is required (CI installs Debian's chromium + chromium-driver): missing, the test
fails rather than skips.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import time

import pytest
import requests

from tests.integration.fixtures_cluster import api, api_json, wait_epoch
from tests.integration.fixtures_nbd import NbdSession

MiB = 1 << 20
REPO = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HOSTILE = '<i>x"&amp;'          # a VDI name the page must show as text


def artifacts_dir() -> pathlib.Path:
    d = pathlib.Path(os.environ.get("SHEEPDOG_TEST_ARTIFACTS") or REPO / "test-artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def browser(tmp_path, request):
    """Headless Chromium (as root in CI: no sandbox); a screenshot at the end, pass or fail."""
    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), f"{path} is missing: apt-get install chromium chromium-driver"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1800", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")     # never let Selenium Manager download
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        try:
            driver.save_screenshot(str(artifacts_dir() / f"ui-{request.node.name}.png"))
        finally:
            driver.quit()


def wait(driver, script: str, what: str, timeout: float = 30.0):
    """Until the page's ``script`` (a JS expression) is truthy; its value."""
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script("return " + script), message=f"page never showed {what}")


NODE_STATES = ("Object.fromEntries([...document.querySelectorAll('#nodes tbody tr')]"
               ".map(r => [r.dataset.node, r.dataset.state]))")


def log_in(driver, token: str) -> None:
    from selenium.webdriver.common.by import By
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "login-submit").click()


def test_status_page_follows_the_cluster(cluster_factory, browser):
    c = cluster_factory(3, copies=None, zones=["a", "b", "c"])
    n0, n1, n2 = c.sheep
    api_json(n0, "/cluster/format", "POST", json={"copies": 2, "block_size_shift": 20})
    wait_epoch(c.sheep, 1)
    api_json(n0, "/vdis", "POST", json={"name": HOSTILE, "size": 16 * MiB})
    api_json(n0, "/vdis", "POST", json={"name": "disk", "size": 64 * MiB})

    # the shell is open and holds no cluster data; the data routes are not
    shell = requests.get(n0.admin_url + "/ui", timeout=10)
    assert shell.status_code == 200 and shell.headers["Content-Type"].startswith("text/html")
    assert n0.node_id not in shell.text and "disk" not in shell.text
    assert requests.get(n0.admin_url + "/ui/ring", timeout=10).status_code == 401

    with NbdSession(n0, "disk") as nbd:
        nbd.must("connect")
        for i in range(40):           # 40 one-MiB objects, two copies each
            nbd.must("pwrite", offset=i * MiB, byte=1 + i, length=MiB)
        nbd.must("flush")

        browser.get(n0.admin_url + "/ui")
        wait(browser, "!document.getElementById('login').hidden", "the token form")
        log_in(browser, "not-the-token")
        refusal = wait(browser, "!document.getElementById('login-msg').hidden && "
                       "document.getElementById('login-msg').textContent", "the refusal")
        assert "refused" in refusal and "wrong admin token" in refusal
        assert browser.execute_script("return document.getElementById('status').hidden")

        log_in(browser, n0.token)
        ids = sorted(n.node_id for n in c.sheep)
        states = wait(browser, f"(s => Object.keys(s).length == 3 && s)({NODE_STATES})",
                      "three nodes")
        assert sorted(states) == ids
        wait(browser, f"Object.values({NODE_STATES}).every(s => s == 'up')", "every node up")
        assert browser.execute_script("return sessionStorage.length") == 1
        assert "not-the-token" not in browser.current_url and n0.token not in browser.current_url

        vdis = wait(browser, "(r => r.length == 2 && r.map(t => [t.dataset.vdi, "
                    "t.cells[0].textContent, t.dataset.attached, t.cells[6].textContent]))("
                    "[...document.querySelectorAll('#vdis tbody tr')])", "two VDIs")
        by_name = {v[0]: v for v in vdis}
        assert set(by_name) == {HOSTILE, "disk"}
        assert by_name[HOSTILE][1] == HOSTILE          # shown as text ...
        assert browser.execute_script("return document.querySelector('#vdis i')") is None
        assert by_name["disk"][2] == "1" and n0.node_id in by_name["disk"][3]
        assert by_name[HOSTILE][2] == "0"
        ring = wait(browser, "document.querySelectorAll('#ring tbody tr').length", "ring rows")
        assert ring == 3

        before = api_json(n0, "/cluster")["epoch"]
        t0 = time.monotonic()
        n2.kill()
        wait(browser, f"{NODE_STATES}[{n2.node_id!r}] == 'down'", "the killed node down")
        down_after = time.monotonic() - t0
        alive = f"[{n0.node_id!r}, {n1.node_id!r}]"
        recovered = wait(
            browser,
            "(el => el.dataset.epoch > %d && el.dataset.state == 'complete' && "
            "[...document.querySelectorAll('#recovery tbody tr')]"
            ".filter(r => %s.includes(r.dataset.node))"
            ".reduce((a, r) => a + Number(r.dataset.total), 0))"
            "(document.getElementById('recovery-state'))" % (before, alive),
            "recovery of the new epoch complete, with objects", timeout=90)
        assert recovered > 0
        history = browser.execute_script(
            "return [...document.querySelectorAll('#epochs tbody tr')].map(r => r.dataset.epoch)")
        assert len(history) >= 2 and int(history[0]) > before
        api_ms = int(browser.execute_script(
            "return document.getElementById('refresh-ms').textContent"))
        print(f"killed node down on the page after {down_after:.1f}s; refresh API time "
              f"{api_ms} ms")
        assert api(n0, "/ui/ring").status_code == 200
