"""`dasi logs report`: one self-contained HTML page of run folders, checked as text and in headless
Chromium (Debian's `chromium`, driven over the DevTools protocol): it loads nothing from anywhere,
logs no console error, draws the curves, and a screenshot of it is not blank."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dasi.cli import app
from dasi.report import PALETTE, render, ticks
from tests.dasi.test_plots import Regression, pretrain_run, sft_run

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
SKIP_VAR = "DASI_SKIP_BROWSER"

EVAL = {  # the agreed shape of metrics/eval.json: our models and peers, and one older entry without role
    "models": {
        "base": {"role": "ours", "path": "data/hf/base",
                 "tasks": {"copa_ko_mini": {"acc": 0.5, "acc_stderr": 0.0898, "n": 32},
                           "humaneval": {"pass@1": 0.0, "n": 164}},
                 "bpb": {"ko": 2.0723, "en": 2.5195}},
        "smollm2-135m-instruct": {"role": "peer", "source": "data/teachers/smollm2-135m-instruct",
                                  "tasks": {"copa_ko_mini": {"acc": 0.53125, "acc_stderr": 0.0896, "n": 32},
                                            "humaneval": {"pass@1": 0.0122, "n": 164}},
                                  "bpb": {"ko": 3.1, "en": 1.02}},
        "sft": {"path": "data/hf/sft",
                "tasks": {"copa_ko_mini": {"acc": 0.5625, "acc_stderr": 0.0891, "n": 32}},
                "bpb": {"ko": 2.4002, "en": 2.7732}},
        "gemma3-270m": {"role": "peer", "source": "data/teachers/gemma3-270m",
                        "tasks": {"copa_ko_mini": {"acc": 0.59375, "acc_stderr": 0.0882, "n": 32}},
                        "bpb": {"ko": 1.35, "en": 1.21}},
    },
}
CURATE = {"format": "curate-stats/2", "input_documents": 242, "kept_documents": 176,
          "kept_by_source": {"kolaw": {"documents": 14, "bytes": 37139},
                             "pydoc": {"documents": 60, "bytes": 82064}},
          "removed_by_filter": {"lid": {}, "gopher_quality": {"pydoc": {"documents": 7}}}}
MIX = {"format": "pack-mix/1", "budget_tokens": 153600,
       "sources": {"kolaw": {"lang": "ko", "tokens_drawn": 26575, "epochs": 2.8674},
                   "pydoc": {"lang": "en", "tokens_drawn": 40834, "epochs": 1.7379}}}


@pytest.fixture
def runs(tmp_path) -> tuple[list[Path], Path]:
    """Two pretrain runs (other seeds), one sft run, and a metrics folder."""
    logs = tmp_path / "logs"
    dirs = [pretrain_run(logs, "20260101T000000Z-00000000", Regression(seed=0), range(1, 13)),
            pretrain_run(logs, "20260101T000001Z-11111111", Regression(seed=1), range(1, 13)),
            sft_run(logs, "20260101T000002Z-22222222", Regression(steps=6))]
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for name, data in (("eval.json", EVAL), ("curate.json", CURATE), ("mix.json", MIX)):
        (metrics / name).write_text(json.dumps(data))
    return dirs, metrics


def test_ticks_are_round_and_cover_the_range():
    assert ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert ticks(3.7, 7.7) == pytest.approx([4, 5, 6, 7])
    assert ticks(2, 2) == [2]


def test_page_holds_runs_curves_data_eval_with_peers_and_environment(runs):
    dirs, metrics = runs
    page = render(dirs, metrics)
    for section in ("runs", "curves", "summaries", "data", "eval", "environment"):
        assert f'<section id="{section}">' in page
    # self-contained: nothing is fetched, nothing runs
    assert not any(s in page.lower() for s in ("http://", "https://", "<script", "<link", " src="))
    assert page.count('<svg class="chart"') == 6 + 11  # pretrain's 6 metrics, sft's 11
    rows = page.split('<table class="eval">')[1].split("</table>")[0].split("<tr")[2:]
    assert [r.split("<th>")[1].split("</th>")[0] for r in rows] == [
        "base", "sft", "smollm2-135m-instruct", "gemma3-270m"]  # ours first (no role: ours), then peers
    assert 'class="peer"' in rows[2] and "data/teachers/smollm2-135m-instruct" in rows[2]
    assert "0.562 ± 0.089" in rows[1] and "0.012" in rows[2] and "(n=164)" in rows[2]
    assert "pass@1" in page and "bits/byte ko" in page
    assert "kept_by_source" in page and "37139" in page and "26575" in page  # data stats as tables
    env = json.loads((dirs[0] / "env.json").read_text())
    assert f"torch {env['packages']['torch']}" in page


def test_cli_writes_the_page_and_refuses_a_folder_that_is_no_run(runs, tmp_path):
    dirs, metrics = runs
    out = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["logs", "report", *map(str, dirs), "--out", str(out),
                                   "--metrics-dir", str(metrics)])
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("<!doctype html>") and str(out) in res.output
    res = CliRunner().invoke(app, ["logs", "report", str(tmp_path / "logs" / "pretrain"), "--out", str(out)])
    assert res.exit_code != 0 and "not a run folder" in res.output


# -- headless Chromium ---------------------------------------------------------------------------

def chromium() -> str:
    """Debian's Chromium: setup installs it; a missing one fails, unless DASI_SKIP_BROWSER=1."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get(SKIP_VAR) == "1":
        pytest.skip(f"chromium not installed and {SKIP_VAR}=1")
    pytest.fail(f"chromium is not installed: `bash scripts/setup.sh` installs it (apt-get, as root), or "
                f"`apt-get install -y chromium`; {SKIP_VAR}=1 skips this test on a machine without it")


class Tab:
    """One page of a headless Chromium, driven over the DevTools protocol's websocket."""

    def __init__(self, ws: Any, timeout: float) -> None:
        self.ws, self.timeout, self.events, self.next_id = ws, timeout, [], 0

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=self.timeout))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            msg = json.loads(self.ws.recv(timeout=self.timeout))
            self.events.append(msg)
            if msg.get("method") == method:
                return msg
        raise TimeoutError(method)

    def evaluate(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"]["value"]

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:300])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args"))[:300])
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(p["entry"].get("text", "")[:300])
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]


@contextmanager
def chromium_tab(exe: str, profile: Path, timeout: float = 60) -> Iterator[Tab]:
    """A fresh headless Chromium (its own profile folder, DevTools on a free loopback port) and
    its first tab; the browser is ended on the way out."""
    from websockets.sync.client import connect

    proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "--window-size=1280,1000", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.time() + timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"chromium did not open its DevTools port (exit {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout) as ws:
            yield Tab(ws, timeout)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PAGE_FACTS = """JSON.stringify({
  charts: document.querySelectorAll('svg.chart').length,
  drawn: [...document.querySelectorAll('svg.chart path.series')]
           .filter(p => p.getTotalLength() > 20 && p.getBBox().width > 20).length,
  sections: [...document.querySelectorAll('section h2')].map(h => h.textContent),
  evalRows: [...document.querySelectorAll('table.eval tr')].slice(1).map(tr => tr.children[0].textContent),
  height: document.documentElement.scrollHeight,
})"""


def test_report_loads_in_headless_chromium_without_errors_and_draws_the_curves(runs, tmp_path):
    import numpy as np
    from PIL import Image

    exe = chromium()
    dirs, metrics = runs
    out = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["logs", "report", *map(str, dirs), "--out", str(out),
                                   "--metrics-dir", str(metrics)])
    assert res.exit_code == 0, res.output
    with chromium_tab(exe, tmp_path / "chromium-profile") as tab:
        for domain in ("Runtime", "Log", "Page", "Network"):
            tab.send(f"{domain}.enable")
        tab.send("Page.navigate", url=out.as_uri())
        tab.wait_for("Page.loadEventFired")
        facts = json.loads(tab.evaluate(PAGE_FACTS))
        tab.send("Emulation.setDeviceMetricsOverride", width=1280, height=min(facts["height"], 8000),
                 deviceScaleFactor=1, mobile=False)
        shot = base64.b64decode(tab.send("Page.captureScreenshot", format="png")["data"])
        errors, requests = tab.errors(), tab.requests()

    assert errors == []
    assert requests == [out.as_uri()]  # the page itself, nothing else
    assert facts["sections"] == ["Runs", "Curves", "Summaries", "Data", "Evaluation", "Environment"]
    assert facts["charts"] == 17
    # lines of two points or more: pretrain 6 metrics x 2 runs, sft 9 (runtime, train_loss: one point)
    assert facts["drawn"] == 12 + 9
    assert facts["evalRows"] == ["base", "sft", "smollm2-135m-instruct", "gemma3-270m"]

    (tmp_path / "report.png").write_bytes(shot)  # kept with the test's files, to look at
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 50_000
    img = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
    assert img.shape[1] == 1280 and img.shape[0] > 2000
    assert (img != 255).any(axis=2).mean() > 0.03  # not blank
    for color in PALETTE[:2]:  # both runs' lines were painted
        rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
        assert (img == rgb).all(axis=2).sum() > 500, color
