"""A small headless-Chromium driver: the Chrome DevTools Protocol over --remote-debugging-pipe.

No WebDriver, no websocket, no browser download: it starts the system's Chromium (Debian's
`chromium` package) with a fresh profile, and speaks CDP as NUL-terminated JSON over two pipes that
Chromium reads on fd 3 and writes on fd 4. Nothing leaves the machine (see FLAGS).

    with Browser(find_chromium()) as browser:
        tab = browser.new_tab(1280, 900)
        tab.goto("http://127.0.0.1:8000/index.html")
        title = tab.evaluate("document.title")
        tab.screenshot(Path("shot.png"))
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

# Flags for a headless Chromium that needs no display, no GPU, no sandbox (CI runs as root) and no
# network of its own: no QUIC, no first-run, no background, component-update or sync traffic.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--font-render-hinting=none",
]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium executable: $CHROMIUM if set, else the first of CANDIDATES on PATH, else None."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"]) or os.environ["CHROMIUM"]
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _high_fd(fd: int) -> int:
    """A duplicate of fd numbered 10 or more (the original is closed)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class CDPError(RuntimeError):
    """A CDP command failed, timed out, or the browser went away."""


class Browser:
    """One headless Chromium process with a throw-away profile; a context manager that always kills it."""

    def __init__(self, executable: str, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="d2lbn-chromium-"))
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._next_id = 0
        self._responses: dict[int, dict] = {}
        self._events: dict[str, list[dict]] = {}     # sessionId ("" for the browser) -> events in order
        self._closed = False
        # Chromium's ends are moved to fds >= 10 so that the shell's 3<&R 4>&W cannot clobber each other.
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        to_chrome_r, from_chrome_w = (_high_fd(to_chrome_r), _high_fd(from_chrome_w))
        self._log = open(self.profile / "chromium.log", "wb")
        cmd = [executable, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"]
        # bash (dash cannot name fds >= 10) puts our pipe ends on the fds Chromium expects: 3 in, 4 out.
        shell = f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}'
        self.proc = subprocess.Popen(["bash", "-c", shell, "chromium", *cmd], pass_fds=(to_chrome_r, from_chrome_w),
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        try:
            self.version = self.send("Browser.getVersion")
        except CDPError:
            self.close()
            raise

    # -- transport ---------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        buf = bytearray()
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while True:
                end = buf.find(b"\0")
                if end < 0:
                    break
                message = json.loads(bytes(buf[:end]))
                del buf[:end + 1]
                with self._cond:
                    if "id" in message:
                        self._responses[message["id"]] = message
                    else:
                        self._events.setdefault(message.get("sessionId", ""), []).append(message)
                    self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str = "", timeout: float | None = None) -> dict:
        """Send one CDP command and wait for its result (a dict); CDPError on error or timeout."""
        with self._lock:
            self._next_id += 1
            call_id = self._next_id
            message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = session
            try:
                os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
            except OSError as exc:
                raise CDPError(f"{method}: the browser is gone ({exc}); see {self.profile / 'chromium.log'}") from exc
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while call_id not in self._responses:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    why = "the browser exited" if self._closed else f"no reply in {timeout or self.timeout:.0f} s"
                    raise CDPError(f"{method}: {why}; see {self.profile / 'chromium.log'}")
                self._cond.wait(left)
            reply = self._responses.pop(call_id)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error'].get('message')} ({reply['error'].get('data', '')})")
        return reply.get("result", {})

    def events(self, session: str = "") -> list[dict]:
        """The events received so far for a session, oldest first (a live list: index it to mark a point)."""
        with self._cond:
            return self._events.setdefault(session, [])

    def wait_event(self, session: str, method: str, since: int, timeout: float,
                   match: Callable[[dict], bool] = lambda e: True) -> dict:
        """The first event `method` of `session` at index >= since that satisfies match; CDPError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                events = self._events.setdefault(session, [])
                for event in events[since:]:
                    if event.get("method") == method and match(event.get("params", {})):
                        return event
                since = max(since, len(events))
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise CDPError(f"no {method} event within {timeout:.0f} s")
                self._cond.wait(left)

    # -- tabs --------------------------------------------------------------------------------------
    def new_tab(self, width: int = 1280, height: int = 900, mobile: bool = False) -> "Tab":
        """A new tab (page target) with a fixed viewport, its Page/Runtime/Log/Network events on."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return Tab(self, target, session, width, height, mobile)

    def close(self) -> None:
        """Close the browser and delete its profile (idempotent)."""
        if self.proc.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except CDPError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in (self._to_chrome,):
            try:
                os.close(fd)
            except OSError:
                pass
        self._reader.join(timeout=5)
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Tab:
    """One page target. goto() loads a URL and waits for its load event; evaluate() runs JavaScript."""

    def __init__(self, browser: Browser, target: str, session: str, width: int, height: int, mobile: bool):
        self.browser, self.target, self.session = browser, target, session
        self.width, self.height, self.mobile = width, height, mobile
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    def send(self, method: str, params: dict | None = None, timeout: float | None = None) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def mark(self) -> int:
        """A point in this tab's event stream; pass it to console_errors/requests/wait_load."""
        return len(self.browser.events(self.session))

    def goto(self, url: str, timeout: float = 30.0) -> None:
        """Navigate and wait for the load event; CDPError if the navigation itself fails."""
        since = self.mark()
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"navigating to {url}: {result['errorText']}")
        self.wait_load(since, timeout)

    def wait_load(self, since: int, timeout: float = 30.0) -> None:
        self.browser.wait_event(self.session, "Page.loadEventFired", since, timeout)

    def evaluate(self, expression: str, await_promise: bool = False, timeout: float | None = None) -> Any:
        """The JSON value of a JavaScript expression; CDPError (with the JS message) if it throws."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": await_promise}, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"JavaScript error: {text}")
        return result.get("result", {}).get("value")

    def console_errors(self, since: int = 0) -> list[str]:
        """Errors the page reported after `since`: console.error/assert, uncaught exceptions, and
        browser log entries of level error (failed resource loads, CSP and mixed-content errors)."""
        errors = []
        for event in self.browser.events(self.session)[since:]:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                errors.append(f"console.{params['type']}: {text}")
            elif method == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                errors.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')} ({d.get('url', '')})")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                e = params["entry"]
                errors.append(f"{e.get('source')}: {e.get('text')} ({e.get('url', '')})")
        return errors

    def requests(self, since: int = 0) -> list[str]:
        """URLs the page requested after `since` (documents, scripts, styles, fonts, images, XHR)."""
        return [e["params"]["request"]["url"] for e in self.browser.events(self.session)[since:]
                if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, full_page: bool = False, max_height: int = 30000) -> Path:
        """Save a PNG of the viewport, or of the whole page (up to max_height CSS pixels tall).

        A full page is taken by making the viewport as tall as the page (captureBeyondViewport would
        re-lay the page out at another width), then restoring the viewport.
        """
        if full_page:
            height = min(max_height, int(self.evaluate("document.documentElement.scrollHeight")))
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": height, "deviceScaleFactor": 1, "mobile": self.mobile})
            self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))", await_promise=True)
        try:
            data = self.send("Page.captureScreenshot", {"format": "png"}, timeout=120)["data"]
        finally:
            if full_page:
                self.send("Emulation.setDeviceMetricsOverride",
                          {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": self.mobile})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
