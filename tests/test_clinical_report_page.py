"""The report page renders offline in headless Chromium: no console error, the tables hold their rows, sorting works."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from medpanoptic.clinical.html import write_report_page
from medpanoptic.clinical.track import volume_plot

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--enable-logging=stderr", "--v=0"]

LESIONS = [{"timepoint": t, "lesion_id": i, "status": s, "volume_mm3": v} for t, i, s, v in
           [(0, 1, "baseline", 900.0), (0, 2, "baseline", 110.5), (1, 1, "grown", 1977.3), (1, 2, "vanished", 0.0),
            (1, 3, "new", 523.6)]]
TIMEPOINTS = [{"timepoint": 0, "response": "baseline", "rule": "2 target lesion(s)"},
              {"timepoint": 1, "response": "PD", "rule": "PD: 1 new lesion(s) <b>not markup</b>"}]


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_report_page_in_headless_chromium(tmp_path):
    plot = volume_plot(LESIONS, ["baseline", "follow-up"], tmp_path / "volumes.png")
    page = write_report_page(tmp_path, "follow-up", {"Time points": TIMEPOINTS, "Lesions": LESIONS},
                             {"lesion volume over time": plot})
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "data:image/png;base64," in text
    shot = _chromium(tmp_path, f"--screenshot={tmp_path / 'page.png'}", "--window-size=1200,900", page.as_uri())
    assert (tmp_path / "page.png").stat().st_size > 5000, shot.stderr
    console = [line for line in shot.stderr.splitlines() if "CONSOLE" in line and ("Error" in line or "ERROR" in line)]
    assert console == []
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    tables = re.findall(r"<tbody>(.*?)</tbody>", dom, flags=re.S)
    assert [t.count("<tr>") for t in tables] == [2, 5]
    assert "&lt;b&gt;not markup&lt;/b&gt;" in dom and "<b>not markup</b>" not in dom
