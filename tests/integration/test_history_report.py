"""`playbook history --html DIR` after real deploys to the sshd fleet, opened in a real headless
Chromium (Debian's package, driven by Playwright): the page loads with no console errors, its
DOM shows every run with per-host status, the timeline and the diffs, and a screenshot is taken."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from engine.cli import main

pytestmark = pytest.mark.fleet

PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "deploy-smartweb.yml"
CHROMIUM = "/usr/bin/chromium"
# what the workplace's probe found Chromium needs here (as root, behind a closed network)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing and CI is set (apt-get install chromium)")
        pytest.skip("chromium not installed")
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def make_tree(root: Path, version: int) -> None:
    for i in range(6):
        p = root / f"app/f{i}.php"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"<?php // v{version} {i} <script>alert('x')</script>\n")
        os.utime(p, (1_700_000_000 + version, 1_700_000_000 + version))


def test_history_report_in_a_real_browser(fleet_factory, tmp_path):
    fleet = fleet_factory(3)
    inv_path = fleet.write_inventory(tmp_path / "inv.yml")
    inv = yaml.safe_load(inv_path.read_text())
    for host in inv["hosts"].values():
        host["vars"]["app_root"] = f"{host['vars']['root']}/app"
    inv_path.write_text(yaml.safe_dump(inv))
    tree, state, out = tmp_path / "tree", tmp_path / "state", tmp_path / "report"
    base = [
        "-i",
        str(inv_path),
        "-e",
        f"smartweb_tree={tree}",
        "--state-dir",
        str(state),
        "-e",
        '{"cache_flush_command": ["true"]}',
    ]
    make_tree(tree, 1)
    assert main(["run", str(PLAYBOOK), *base]) == 0
    make_tree(tree, 2)
    fleet.stop_host(2)  # the second run fails on one host
    assert main(["run", str(PLAYBOOK), *base]) == 1
    fleet.start_host(2)

    assert main(["history", "--html", str(out), "--state-dir", str(state)]) == 0
    assert (out / "index.html").is_file() and (out / "assets" / "report.css").is_file()
    page_html = (out / "index.html").read_text()
    assert "<script>alert" not in page_html  # file content from a diff is escaped, never markup
    assert "http://" not in page_html.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from a network

    errors: list[str] = []
    with _browser() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on(
                "console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
            )
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto((out / "index.html").as_uri())
            page.wait_for_load_state("load")
            runs = page.locator("section.run")
            assert runs.count() == 2
            statuses = [runs.nth(i).get_attribute("data-status") for i in range(2)]
            assert statuses == ["failed", "ok"]  # newest first
            failed = runs.nth(0)
            down = fleet.names[2]
            assert down in failed.locator("table.hosts").inner_text()
            assert failed.locator("tr.unreachable td.hostname").inner_text() == down
            # the timeline: a bar per step per host, the unreachable one in its own colour
            assert failed.locator("svg.timeline rect.step").count() >= 5
            assert failed.locator("svg.timeline rect.unreachable").count() >= 1
            # the first run's diffs, per host: the files the sync created
            ok = runs.nth(1)
            first_change = ok.locator("details.change").first
            first_change.locator("summary").click()
            assert "app/f0.php" in first_change.inner_text()
            # the status filter (the page's one script) hides the other runs
            page.click("button[data-filter=failed]")
            assert ok.is_hidden() and failed.is_visible()
            page.click("button[data-filter=all]")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get("PLAYBOOK_REPORT_SCREENSHOT"):  # docs/history-report.png is made this way
                shutil.copy(shot, os.environ["PLAYBOOK_REPORT_SCREENSHOT"])
        finally:
            browser.close()
    assert errors == []
