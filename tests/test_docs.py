"""The documentation site: `mkdocs build --strict` (offline, warnings are errors), its math and command pages,
and every page plus the committed reproduction report rendered by headless Chromium at desktop and phone width:
no console messages, no failed request (images, scripts, styles), every internal link answers.

Chromium is Debian's package (`apt-get install -y chromium`; .ci/run installs it when missing); without it the
browser test skips and says so. Set NTKFT_SHOTS=DIR to keep the screenshots."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import ROOT

WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


class _Refs(HTMLParser):
    """Every href/src of a page: (tag, attribute, value)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v:
                self.refs.append((tag, k, v))


def refs(path: Path) -> list[tuple[str, str, str]]:
    p = _Refs()
    p.feed(path.read_text(encoding="utf-8"))
    return p.refs


def test_site_is_complete_and_offline(site):
    from typer.main import get_command

    from ntkft.cli import _register, app

    _register()
    for name in get_command(app).commands:  # one page per command, generated from the CLI
        assert (site / "commands" / f"{name}.html").is_file(), name
    assert "--batch-size" in (site / "commands" / "stop.html").read_text()
    for page in ("getting-started", "tasks", "reading-reports", "examples", "api", "theory"):
        assert (site / f"{page}.html").is_file(), page
    assert "finetune_action" in (site / "api.html").read_text()  # the API page is built from the docstrings
    assert (site / "javascripts" / "tex-svg.js").stat().st_size > 100_000  # MathJax shipped, not from a CDN
    for page in site.rglob("*.html"):
        for tag, _, v in refs(page):
            if tag in ("script", "img", "link", "iframe") and re.match(r"(https?:)?//", v):
                assert tag == "link" and "stylesheet" not in v and not v.endswith((".css", ".js")), \
                    f"{page.name} loads {v} from the network"


def test_code_cites_existing_theory_sections():
    sections = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "theory.md").read_text(), re.M))
    for f in (ROOT / "src").rglob("*.py"):
        for first, last in re.findall(r"docs/theory\.md sec\. (\d)(?:-(\d))?", f.read_text()):
            for s in (first, last or first):
                assert s in sections, f"{f}: cites docs/theory.md sec. {s}, which does not exist"


class _Log(http.server.SimpleHTTPRequestHandler):
    failed: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def send_response(self, code, message=None):
        if code >= 400 and self.path != "/favicon.ico":  # the browser's own favicon probe is not the page's
            _Log.failed.append(f"{code} {self.path}")
        super().send_response(code, message)


@pytest.fixture(scope="module")
def served(site, tmp_path_factory):
    """site/ at the server's root (404.html uses absolute paths) and the committed report under /_report/."""
    root = tmp_path_factory.mktemp("www") / "root"
    shutil.copytree(site, root)
    shutil.copytree(ROOT / "docs" / "results" / "repro", root / "_report")
    handler = lambda *a, **k: _Log(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("headless Chromium not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
    return exe


def render(exe: str, url: str, shot: Path, size: tuple[int, int]) -> list[str]:
    """Open `url` headless at `size`, screenshot it; the console messages the page logged."""
    proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=4000",
                           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                           f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}", url],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 5000, f"no screenshot of {url}: {proc.stderr[-1500:]}"
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def test_pages_render_in_chromium(served, tmp_path):
    exe = _chromium()
    root, base = served
    shots = Path(os.environ.get("NTKFT_SHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    pages = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html") if p.parts[-2] != "_report")
    pages.append("_report/report.html")
    problems: list[str] = []
    for page in pages:
        for label, size in WIDTHS.items():
            _Log.failed.clear()
            console = render(exe, f"{base}/{page}", shots / f"{page.replace('/', '_')}-{label}.png", size)
            problems += [f"{page} ({label}): console: {c}" for c in console]
            problems += [f"{page} ({label}): request failed: {f}" for f in _Log.failed]
        for tag, attr, v in refs(root / page):  # internal links and resources answer
            if re.match(r"([a-z]+:|//|#)", v):
                continue
            target = urllib.request.urljoin(f"{base}/{page}", v.split("#")[0])
            try:
                urllib.request.urlopen(target, timeout=10).close()
            except Exception as e:
                problems.append(f"{page}: {tag} {attr}={v} does not answer ({e})")
    assert not problems, "\n".join(problems[:40])


def test_math_is_typeset(served):
    exe = _chromium()
    _, base = served
    dom = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=6000",
                          "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--dump-dom",
                          f"{base}/theory.html"], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<mjx-container") > 20, "MathJax did not typeset docs/theory.md"
    text = re.sub(r"<(script|mjx-container)\b.*?</\1>", "", dom, flags=re.S)
    for raw in ("$$", "\\frac", "\\sum"):  # TeX left as text: a block the markdown did not hand to MathJax
        assert raw not in text, f"untypeset TeX {raw!r} on the theory page"
