"""Open an HTML page in real headless Chromium and report what actually rendered.

Drives `chromedriver` over its W3C WebDriver HTTP API with the standard library only (no selenium),
and decodes the PNG screenshot with zlib (no Pillow). Usable from any test:

    from browser import browser_missing, render_and_inspect
    if (why := browser_missing()): pytest.skip(why)
    info = render_and_inspect("results/report/index.html", tmp_path / "report.png")
    assert info["tables"]["summary-table"]["visible_rows"] == 12

`render_and_inspect` returns a dict:
  title            document title
  tables           {table id (or "table-<n>"): {"rows", "visible_rows", "width", "height", "classes"}}
  svgs             [{"id", "classes", "width", "height", "polylines", "paths", "max_points",
                     "total_points", "label"}] (points counted by the browser's SVG DOM)
  resources        URLs of every resource the page loaded (Performance API): should be empty
  external_refs    src/href attributes that are not in-page anchors / data: URLs
  console_errors   SEVERE browser-log entries (e.g. a CSP violation)
  page             {"width", "height"} of the document in CSS pixels
  screenshot       {"path", "width", "height", "distinct_colors", "non_background_fraction",
                    "background"} from decoding the full-page PNG
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
    "--disable-breakpad", "--disable-crash-reporter",
]


def chromium_path() -> str | None:
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromedriver_path() -> str | None:
    if os.access("/usr/bin/chromedriver", os.X_OK):
        return "/usr/bin/chromedriver"
    return shutil.which("chromedriver")


def browser_missing() -> str | None:
    """None when the browser tests can run, else a message saying what is missing."""
    if not chromium_path():
        return ("headless Chromium not found (/usr/bin/chromium or `chromium` on PATH); "
                "install it with .ci/system-deps.sh (Debian packages chromium, chromium-driver)")
    if not chromedriver_path():
        return ("chromedriver not found (/usr/bin/chromedriver or on PATH); "
                "install it with .ci/system-deps.sh (Debian package chromium-driver)")
    return None


# --------------------------------------------------------------------------- PNG decoding (zlib)

def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, channels, raw pixel bytes, rows top to bottom) for 8-bit, non-interlaced
    grey / RGB / grey+alpha / RGBA PNGs, which is what Chromium writes."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif ctype == b"IDAT":
            idat.append(chunk)
        elif ctype == b"IEND":
            break
    if ihdr is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, color, _, _, interlace = ihdr
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {color}, interlace {interlace})")
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    out = bytearray(stride * height)
    prev = bytearray(stride)
    bpp = channels
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if ftype == 0:
            pass
        elif ftype == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif ftype == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:  # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        else:
            raise ValueError(f"bad PNG filter type {ftype} on row {y}")
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, channels, bytes(out)


def png_stats(data: bytes) -> dict:
    """Pixel statistics of a PNG: size, number of distinct colours, share of non-background pixels
    (background = the most common colour)."""
    width, height, channels, pixels = decode_png(data)
    stride = width * channels
    counts: Counter = Counter()
    step = channels
    for y in range(height):
        row = pixels[y * stride:(y + 1) * stride]
        counts.update(row[i:i + step] for i in range(0, stride, step))
    total = width * height
    background, bg_count = counts.most_common(1)[0] if counts else (b"", 0)
    return {"width": width, "height": height, "distinct_colors": len(counts),
            "non_background_fraction": (1 - bg_count / total) if total else 0.0,
            "background": tuple(background)}


# --------------------------------------------------------------------------- WebDriver client

class _Driver:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"  # local chromedriver only
        self.session = None

    def call(self, method: str, path: str, body=None, timeout: float = 30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            payload = json.loads(e.read() or b"{}")
            raise RuntimeError(f"WebDriver {method} {path} failed: {payload.get('value')}") from None
        return payload.get("value")

    def s(self, method, path, body=None, timeout: float = 30):
        return self.call(method, f"/session/{self.session}{path}", body, timeout)

    def js(self, script: str, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_INSPECT_JS = r"""
const box = el => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
const tables = {};
document.querySelectorAll('table').forEach((t, i) => {
  const rows = Array.from(t.tBodies).flatMap(b => Array.from(b.rows));
  const visible = rows.filter(r => { const [w, h] = box(r); return w > 0 && h > 0; });
  const [w, h] = box(t);
  const head = t.tHead ? Array.from(t.tHead.rows[0].cells).map(c => c.innerText.trim()) : [];
  const cells = visible.map(r => Array.from(r.cells).map(c => [c.innerText.trim(), c.className]));
  tables[t.id || ('table-' + i)] = {rows: rows.length, visible_rows: visible.length,
                                     width: w, height: h, classes: t.className, head: head, cells: cells};
});
const svgs = Array.from(document.querySelectorAll('svg')).map(s => {
  const [w, h] = box(s);
  const polys = Array.from(s.querySelectorAll('polyline, polygon'));
  const counts = polys.map(p => p.points.numberOfItems);
  const paths = Array.from(s.querySelectorAll('path'));
  const pathLens = paths.map(p => { try { return p.getTotalLength(); } catch (e) { return 0; } });
  return {id: s.id || null, classes: s.getAttribute('class') || '', width: w, height: h,
          polylines: polys.length, paths: paths.length,
          max_points: counts.length ? Math.max(...counts) : 0,
          total_points: counts.reduce((a, b) => a + b, 0),
          path_length: pathLens.reduce((a, b) => a + b, 0),
          label: s.getAttribute('aria-label') || ''};
});
const ext = [];
document.querySelectorAll('[src], [href]').forEach(el => {
  for (const a of ['src', 'href']) {
    const v = el.getAttribute(a);
    if (v !== null && !v.startsWith('#') && !v.startsWith('data:')) ext.push(a + '=' + v);
  }
});
return {title: document.title, tables: tables, svgs: svgs, external_refs: ext,
        resources: performance.getEntriesByType('resource').map(e => e.name),
        page: {width: document.documentElement.scrollWidth,
               height: document.documentElement.scrollHeight}};
"""


def render_and_inspect(html_path, screenshot_path, *, width: int = 1280, height: int = 900,
                       timeout: float = 60) -> dict:
    """Load `html_path` (file) in headless Chromium, save a full-page PNG to `screenshot_path`,
    and return what rendered (see the module docstring). Raises RuntimeError when the browser
    cannot be driven; call `browser_missing()` first to skip cleanly."""
    why = browser_missing()
    if why:
        raise RuntimeError(why)
    html_path = Path(html_path).resolve()
    screenshot_path = Path(screenshot_path)
    screenshot_path.parent.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="tuneflow-chromium-")
    log = open(Path(profile).with_suffix(".chromedriver.log"), "w+b")
    proc = subprocess.Popen([chromedriver_path(), f"--port={port}"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    drv = _Driver(port)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if (drv.call("GET", "/status", timeout=2) or {}).get("ready"):
                    break
            except (OSError, RuntimeError, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"chromedriver did not start: {log.read()[-2000:].decode(errors='replace')}")
            time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "pageLoadStrategy": "normal",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": chromium_path(),
                                   "args": CHROMIUM_FLAGS + [f"--user-data-dir={profile}",
                                                             f"--window-size={width},{height}"]}}}}
        drv.session = drv.call("POST", "/session", caps, timeout=timeout)["sessionId"]
        drv.s("POST", "/timeouts", {"pageLoad": int(timeout * 1000), "script": int(timeout * 1000)})
        drv.s("POST", "/url", {"url": html_path.as_uri()}, timeout=timeout)
        drv.js("return document.fonts ? document.fonts.ready.then(() => true) : true;")
        info = drv.js(_INSPECT_JS)
        page_w = max(int(info["page"]["width"]), 1)
        page_h = max(int(info["page"]["height"]), 1)
        shot = drv.s("POST", "/goog/cdp/execute", {"cmd": "Page.captureScreenshot", "params": {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": page_w, "height": page_h, "scale": 1}}},
            timeout=timeout)
        png = base64.b64decode(shot["data"])
        screenshot_path.write_bytes(png)
        try:
            logs = drv.s("POST", "/se/log", {"type": "browser"}) or []
        except RuntimeError:
            logs = []
        info["console_errors"] = [e.get("message", "") for e in logs if e.get("level") == "SEVERE"]
        info["screenshot"] = {"path": str(screenshot_path), **png_stats(png)}
        return info
    finally:
        if drv.session:
            try:
                drv.call("DELETE", f"/session/{drv.session}", timeout=10)
            except (OSError, RuntimeError, ValueError):
                pass
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        Path(log.name).unlink(missing_ok=True)
        shutil.rmtree(profile, ignore_errors=True)
