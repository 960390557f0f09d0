"""A real web viewer for tests: OHIF's prebuilt bundle over Orthanc DICOMweb, in headless Chromium.

Three real peers, nothing mocked:

- :class:`DicomWebOrthanc`: Debian's Orthanc with Debian's DICOMweb plugin (``orthanc-dicomweb``);
- :class:`ViewerServer`: a small HTTP server on loopback that serves OHIF's prebuilt ``dist/``
  (npm ``@ohif/app`` 3.13.x), answers ``/app-config.js`` with a configuration whose only data
  source is DICOMweb at ``/dicom-web``, falls back to ``index.html`` for the viewer's routes, and
  proxies ``/dicom-web/...`` to Orthanc, so that the viewer and its data share one origin (no CORS);
- :class:`Chromium`: Debian's ``chromium`` headless (WebGL through SwiftShader), driven over the
  DevTools protocol with a small websocket client (PyPI ``websocket-client``); it collects console
  messages and uncaught exceptions, evaluates JavaScript and takes screenshots.

Where OHIF's bundle is: ``$DICOMNODE_OHIF_DIST`` or ``build/npm/ohif-app-3.13.2/package/dist`` of the
checkout (``scripts/setup.sh system test``, run by ``make test``, unpacks ``npm pack @ohif/app@3.13.2``
there). A missing peer is a loud failure in CI (tests.peers.require).
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dicomnode.tools.harness import free_port, wait_for_port
from tests.peers import Orthanc, require

ROOT = Path(__file__).resolve().parents[1]
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def ohif_dist() -> Path:
    """The unpacked OHIF bundle (module docstring)."""
    return Path(os.environ.get("DICOMNODE_OHIF_DIST", ROOT / "build" / "npm" / "ohif-app-3.13.2" / "package" / "dist"))


class DicomWebOrthanc(Orthanc):
    """Orthanc with its DICOMweb plugin at ``/dicom-web/``."""

    def __init__(self, workdir: Path | None = None) -> None:
        super().__init__(workdir=workdir)
        require(DICOMWEB_PLUGIN.exists(), "Orthanc's DICOMweb plugin", "apt-get install orthanc-dicomweb")
        config = json.loads(self.config_path.read_text())
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full",
                              "SeriesMetadata": "Full"}
        self.config_path.write_text(json.dumps(config, indent=2))


def app_config() -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source on the same origin (OHIF 3.13 keys)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "Orthanc (test)",
            "name": "orthanc",
            "wadoUriRoot": "/dicom-web",
            "qidoRoot": "/dicom-web",
            "wadoRoot": "/dicom-web",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "dicomUploadEnabled": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "showErrorDetails": "always",
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class ViewerServer:
    """OHIF's bundle and a ``/dicom-web`` proxy to Orthanc on one loopback origin."""

    def __init__(self, dist: Path, orthanc_http_port: int) -> None:
        require((dist / "index.html").exists(), f"OHIF's prebuilt bundle at {dist}",
                "scripts/setup.sh system test (npm pack @ohif/app@3.13.2, unpacked under build/npm/)")
        self.dist = dist.resolve()
        self.orthanc_http_port = orthanc_http_port
        self.port = free_port()
        self.requests: list[tuple[str, int]] = []  # (path, status) of every request, for failures
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ViewerServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        config = app_config().encode()
        types = {".js": "application/javascript", ".css": "text/css", ".html": "text/html",
                 ".wasm": "application/wasm", ".json": "application/json", ".svg": "image/svg+xml",
                 ".woff2": "font/woff2", ".png": "image/png", ".ico": "image/x-icon"}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # the test reads server.requests instead
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                server.requests.append((self.path, status))

            def _proxy(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                connection = http.client.HTTPConnection("127.0.0.1", server.orthanc_http_port, timeout=120)
                forward = {k: v for k, v in self.headers.items()
                           if k.lower() in ("accept", "content-type")}
                connection.request(self.command, self.path, body=body, headers=forward)
                reply = connection.getresponse()
                data = reply.read()
                headers = {k: v for k, v in reply.getheaders()
                           if k.lower() in ("content-type",)}
                connection.close()
                self._send(reply.status, data, headers)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path.startswith("/dicom-web/"):
                    self._proxy()
                    return
                if path == "/app-config.js":
                    self._send(200, config, {"Content-Type": "application/javascript"})
                    return
                file = (server.dist / path.lstrip("/")).resolve()
                if not file.is_relative_to(server.dist) or not file.is_file():
                    file = server.dist / "index.html"  # the viewer's own routes (/viewer, ...)
                content_type = types.get(file.suffix, "application/octet-stream")
                self._send(200, file.read_bytes(), {"Content-Type": content_type})

            do_HEAD = do_GET

            def do_POST(self) -> None:  # noqa: N802
                if self.path.startswith("/dicom-web/"):
                    self._proxy()
                else:
                    self._send(405, b"", {})

        return Handler


class Chromium:
    """Headless Chromium on a DevTools websocket: one page, its console and exceptions recorded."""

    def __init__(self, workdir: Path, width: int = 1600, height: int = 1000) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        require(binary is not None, "Chromium", "apt-get install chromium")
        require(importlib.util.find_spec("websocket") is not None, "websocket-client",
                "pip install websocket-client")
        self.binary = str(binary)
        self.workdir = workdir
        self.size = (width, height)
        self.port = free_port()
        self.console: list[str] = []  # "level: text" of console messages and log entries
        self.exceptions: list[str] = []  # uncaught exceptions and unhandled rejections
        self._next_id = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: Any = None
        self._log: Any = None

    def __enter__(self) -> Chromium:
        import websocket

        profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=self.workdir))
        self._log = (self.workdir / "chromium.log").open("wb")
        self._process = subprocess.Popen(
            [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu-sandbox",
             "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "--ignore-gpu-blocklist", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--remote-debugging-port={self.port}", f"--user-data-dir={profile}",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self._log,
        )
        wait_for_port(self.port, process=self._process)
        deadline = time.monotonic() + 30
        while True:
            targets = json.loads(_http_get(f"http://127.0.0.1:{self.port}/json/list"))
            pages = [t for t in targets if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert pages, f"Chromium opened no page: {targets}"
        self._socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60,
                                                   suppress_origin=True)
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  width=self.size[0], height=self.size[1], deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._socket is not None:
            self._socket.close()
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        if self._log is not None:
            self._log.close()

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result; events read meanwhile are recorded."""
        self._next_id += 1
        ident = self._next_id
        self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._record(message)

    def _record(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(_remote_text(arg) for arg in params.get("args", []))
            self.console.append(f"{params.get('type')}: {text}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append(f"{entry.get('level')}: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            self.exceptions.append(exception.get("description") or details.get("text", "exception"))

    def pump(self, seconds: float) -> None:
        """Read events for ``seconds`` (the page keeps running either way)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.evaluate("1")
            time.sleep(0.25)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=await_promise)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(details.get("exception", {}).get("description") or details.get("text"))
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not seen within {timeout:.0f} s")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path


def _remote_text(arg: dict[str, Any]) -> str:
    if "value" in arg:
        return str(arg["value"])
    return str(arg.get("description") or arg.get("type"))


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()
