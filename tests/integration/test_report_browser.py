"""The compliance documents of a real demo federation, opened in a real headless Chromium.

A small demo (real Flower simulation, real embedded ledger, DP-SGD on, one tampering
bank) runs once; ``fedledger report`` writes its documents; Chromium, with every network
route closed, opens ``federation.html`` and is driven over the DevTools protocol (CDP,
spoken with ``websocket-client``): the page must load without a console error or
exception, request nothing but the file itself, and show every chart with a real size.
The PDF's pages are rendered with pdfium.

``FEDLEDGER_WRITE_SCREENSHOTS=1`` writes the screenshots to ``docs/`` for the README.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_demo_cli import fedledger

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHARTS = ["chart-epsilon", "chart-evaluation", "chart-rejections", "chart-scores", "chart-tokens"]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.fail("Chromium is not installed: `./run test` installs it (the compliance report is checked "
                    "in a real headless browser)")
    return found


def screenshot_path(tmp_path: Path, name: str) -> Path:
    """``docs/<name>`` when the screenshots are to be refreshed for the README, else a tmp file."""
    if os.environ.get("FEDLEDGER_WRITE_SCREENSHOTS") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        return REPO / "docs" / name
    return tmp_path / name


def assert_not_blank(png: bytes, what: str) -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    grey = image.convert("L")
    inked = sum(grey.histogram()[:200])
    colours = len(image.getcolors(maxcolors=1 << 20) or [])
    assert inked > 2_000, f"{what} looks blank: {inked} non-white pixels"
    assert colours > 50, f"{what} has only {colours} colours: no charts drawn"


class DevTools:
    """A minimal CDP client over the browser's websocket, with one flattened page session."""

    def __init__(self, url: str) -> None:
        import websocket

        self.socket = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def call(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if not browser and self.session is not None:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            event = json.loads(self.socket.recv())
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise AssertionError(f"no {method} within {timeout} s")

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    """A headless Chromium with no network (every host unresolvable, a dead proxy), a fresh
    profile under tmp_path, and a CDP session on its one page; stopped by its PID."""
    profile = tmp_path / "chromium-profile"
    args = [chromium_path(), "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
            "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--no-first-run", "--no-default-browser-check",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1280,2400", "about:blank"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    devtools = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            assert process.poll() is None, f"Chromium exited with {process.returncode} before DevTools was up"
            assert time.monotonic() < deadline, "Chromium's DevTools did not come up within 60 s"
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        devtools = DevTools(f"ws://127.0.0.1:{port}{path}")
        pages = [t for t in devtools.call("Target.getTargets", browser=True)["targetInfos"] if t["type"] == "page"]
        assert pages, "Chromium has no page"
        attached = devtools.call("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True},
                                 browser=True)
        devtools.session = attached["sessionId"]
        yield devtools
    finally:
        if devtools is not None:
            devtools.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        try:  # helpers Chromium started in its own session (renderer, zygote), by that session's id
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def demo_reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3-round demo with DP-SGD and a tampering bank-c, and the reports ``fedledger report`` wrote."""
    workdir = tmp_path_factory.mktemp("report-demo") / "demo"
    fedledger("demo", "--workdir", str(workdir), "--rounds", "3", "--participants", "3", "--dp-epsilon", "2",
              "--adversary", "bank-c:tamper", "--json")
    config = workdir / "federation.toml"
    proc = fedledger("report", "--config", str(config))
    assert "federation demo-fed: compliant" in proc.stdout, proc.stdout
    return config, workdir / "reports"


def test_report_writes_html_and_pdf_for_the_federation_and_each_round_and_json_gains_the_series(
        demo_reports, tmp_path):
    config, reports = demo_reports
    names = sorted(p.name for p in reports.iterdir())
    assert names == sorted(["federation.html", "federation.pdf"]
                           + [f"round-000{r}.{ext}" for r in (1, 2, 3) for ext in ("html", "json", "md", "pdf")])
    doc = json.loads(fedledger("report", "--config", str(config), "--json").stdout)
    assert doc["compliant"] is True and [r["round"] for r in doc["rounds"]] == [1, 2, 3]
    series = doc["series"]
    assert series["rounds"] == [1, 2, 3] and series["rejections"] == {"digest_mismatch": [1, 1, 1]}
    assert sorted(series["epsilon"]) == ["bank-a", "bank-b"] and series["epsilon_total"] == pytest.approx(6.0)
    assert all(0 < v <= 6.0 for line in series["epsilon"].values() for v in line)
    assert all(v is not None and 0.5 < v <= 1 for v in series["evaluation"]["auc"])
    fedledger("report", "--config", str(config), "--round", "2", "--out", str(tmp_path / "two"))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "round-0002.html", "round-0002.json", "round-0002.md", "round-0002.pdf"]


def test_federation_html_renders_in_chromium_offline_with_its_charts_and_no_console_error(
        demo_reports, chromium, tmp_path):
    _, reports = demo_reports
    page = (reports / "federation.html").resolve().as_uri()
    for domain in ("Page", "Runtime", "Log", "Network"):
        chromium.call(f"{domain}.enable")
    chromium.call("Page.navigate", {"url": page})
    chromium.wait_for("Page.loadEventFired")

    state = chromium.call("Runtime.evaluate", {"returnByValue": True, "awaitPromise": True, "expression": """
        (async () => {
          const images = Array.from(document.querySelectorAll('img[id^="chart-"]'));
          await Promise.all(images.map(i => i.decode().catch(() => null)));
          return {
            verdict: document.querySelector('#verdict .word').textContent.trim(),
            charts: images.map(i => ({id: i.id, width: i.naturalWidth, height: i.naturalHeight,
                                      shown: i.getBoundingClientRect().width, scheme: i.src.split(':')[0]})),
            text: document.body.innerText,
          };
        })()"""})["result"]["value"]
    assert state["verdict"] == "COMPLIANT"
    assert sorted(c["id"] for c in state["charts"]) == CHARTS
    for chart in state["charts"]:
        assert chart["scheme"] == "data" and chart["shown"] > 100, chart
        assert chart["width"] > 100 and chart["height"] > 50, chart  # decoded, with its natural size
    for participant in ("bank-a", "bank-b", "bank-c"):
        assert participant in state["text"]
    assert "digest_mismatch" in state["text"]

    chromium.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 2400, "deviceScaleFactor": 1,
                                                         "mobile": False})
    shot = chromium.call("Page.captureScreenshot", {"format": "png"})
    png = base64.b64decode(shot["data"])
    screenshot_path(tmp_path, "report-federation.png").write_bytes(png)
    assert_not_blank(png, "the screenshot of federation.html")

    errors = [e for e in chromium.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == [], errors
    requested = [e["params"]["request"]["url"] for e in chromium.events
                 if e.get("method") == "Network.requestWillBeSent"]
    assert requested and all(url == page or url.startswith("data:") for url in requested), requested


def test_federation_pdf_pages_render_with_the_verdict_and_charts(demo_reports, tmp_path):
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    _, reports = demo_reports
    pdf = (reports / "federation.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    document = pdfium.PdfDocument(pdf)
    try:
        assert len(document) >= 4  # verdict, policy and charts, then one page per round
        assert "COMPLIANT" in document[0].get_textpage().get_text_range()
        images = sum(len(list(document[i].get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE])))
                     for i in range(len(document)))
        assert images == len(CHARTS)  # the same charts as the HTML, as PNG images
        for i in range(len(document)):
            image = document[i].render(scale=1.5).to_pil()
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            if i == 0:
                screenshot_path(tmp_path, "report-pdf-page1.png").write_bytes(buffer.getvalue())
            assert_not_blank(buffer.getvalue(), f"page {i + 1} of federation.pdf")
    finally:
        document.close()
