"""``pvtv2 serve``: a local web page to try the models, on the standard library's ``ThreadingHTTPServer``.

One page (``page.html``, ``page.js``, ``page.css`` beside this file: vanilla JavaScript, no external asset, works
offline) and a JSON API:

- ``GET /``, ``/page.js``, ``/page.css``: the page; ``GET /api/info``: the panels' models, the model choices of each
  panel (``choices``: ``{panel: {"current": id, "options": [{"id", "label"}]}}``), the limits, the examples;
- ``POST /api/model`` (JSON ``{"panel", "choice"}``, an id of ``/api/info``'s choices, never a path): load that model
  into the panel (kept in a small cache); answers the panels' new info (``attention`` follows the classifier);
- ``GET /api/example/NAME.jpg``: scikit-image's bundled photos (astronaut, chelsea, coffee, rocket) as JPEG;
- ``POST /api/image`` (body: the file's bytes): decode, check, convert to 8-bit RGB, shrink to the working size;
  answers ``{"id", "width", "height", "original", "note", "preview"}`` (the working copy, what every model sees);
- ``POST /api/classify|detect|segment|attention`` (JSON ``{"id"[, "y", "x"]}``): one model call each, with ``ms``.

Bad input answers ``{"error": "<one line>"}``: 400 (not an image, corrupt, unknown id), 413 (more than 20 MB or
40 megapixels). Grey, palette, RGBA, CMYK and 16-bit images are converted (:func:`pvtv2.data.images.to_rgb`:
16-bit scaled by 255/65535, transparency over white); the EXIF orientation is applied.

Measured on the 2-core AMD EPYC development machine while a training job used both cores: ``import
pvtv2.serve.app`` 2.2 s (torch 1.75 s of it; the task packages load with the models); ``pvtv2 serve`` to the first
answer 7.6 s, of which 2.3-2.7 s are the three random-weights B0 models and the socket (the rest is the ``pvtv2``
command line's own start). Per-request figures: docs/serve.md.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.images import to_rgb
from ..errors import DataError
from . import models as tasks
from . import predict

log = logging.getLogger(__name__)

MAX_BYTES = 20 * 1024 * 1024  # uploads larger than 20 MB are refused
MAX_PIXELS = 40_000_000  # and images of more than 40 megapixels
WORK_SIDE = 1024  # the working copy's longer side (every model sees this copy)
EXAMPLES = ("astronaut", "chelsea", "coffee", "rocket")  # skimage.data photos
ASSETS = {"/": ("page.html", "text/html"), "/page.js": ("page.js", "text/javascript"),
          "/page.css": ("page.css", "text/css")}
_MODES = {"1": "1-bit", "L": "grey", "LA": "grey with transparency", "P": "palette", "PA": "palette with transparency",
          "RGBA": "RGB with transparency", "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV",
          "I": "32-bit integer", "F": "32-bit float", "I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit",
          "I;16N": "16-bit"}


class UploadError(DataError):
    """An upload the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, str]:
    """An uploaded file's bytes -> (8-bit RGB image, one line saying what was converted).

    Raises:
        UploadError: empty, too large (bytes or pixels), not an image, or an image that cannot be decoded.
    """
    if not data:
        raise UploadError("the file is empty: choose an image file")
    if len(data) > max_bytes:
        raise UploadError(f"the file is {len(data) / 2**20:.1f} MB: the limit is {max_bytes / 2**20:g} MB", 413)
    fmt = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, mode, (w, h) = img.format or "image", img.mode, img.size
                if w * h > max_pixels:
                    raise UploadError(f"the {fmt} is {w}x{h} = {w * h / 1e6:.1f} megapixels: the limit is "
                                      f"{max_pixels / 1e6:g} megapixels", 413)
                img.load()  # decode now: a truncated file fails here
                rgb = to_rgb(ImageOps.exif_transpose(img) or img)
    except UnidentifiedImageError:
        raise UploadError("not an image (none of the formats PIL reads: JPEG, PNG, WebP, GIF, BMP, TIFF...)") \
            from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UploadError(f"the {fmt} file cannot be decoded (truncated or corrupt?): {reason}") from None
    note = f"{fmt} {w}x{h}, {_MODES.get(mode, mode)}"
    if mode != "RGB":
        note += f" ({mode}) converted to 8-bit RGB"
        if mode.startswith("I;16"):
            note += ", values scaled by 255/65535"
        if mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            note += ", transparency over white"
    return rgb, note


def working_copy(image: Image.Image, side: int = WORK_SIDE) -> Image.Image:
    """``image`` shrunk (aspect kept, Lanczos) so that its longer side is at most ``side``."""
    if max(image.size) <= side:
        return image
    s = side / max(image.size)
    return image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.LANCZOS)


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class ImageStore:
    """The last ``size`` working copies by id (threads share it)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: OrderedDict[str, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, image: Image.Image) -> str:
        """Keep ``image`` (dropping the oldest beyond ``size``); returns its id."""
        key = secrets.token_hex(8)
        with self._lock:
            self._items[key] = image
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> Image.Image:
        """The image of id ``key``; an id no longer held raises :class:`UploadError`."""
        with self._lock:
            if key not in self._items:
                raise UploadError(f"the server no longer holds image {key!r} (it keeps the last {self.size}): "
                                  "upload it again")
            self._items.move_to_end(key)
            return self._items[key]


class ServeServer(ThreadingHTTPServer):
    """The HTTP server and what its handlers share: the models, the uploaded images, the limits."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], served: tasks.Models, *, max_bytes: int = MAX_BYTES,
                 max_pixels: int = MAX_PIXELS, work_side: int = WORK_SIDE) -> None:
        super().__init__(address, Handler)
        self.models = served
        self.store = ImageStore()
        self.max_bytes, self.max_pixels, self.work_side = max_bytes, max_pixels, work_side
        self.examples: dict[str, bytes] = {}

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` (the port the system gave for port 0)."""
        host, port = self.server_address[:2]
        return f"http://{'[%s]' % host if ':' in str(host) else host}:{port}/"

    def info(self) -> dict[str, Any]:
        """``/api/info``: each panel's model, the examples, the upload limits."""
        return {"panels": {k: p.info() for k, p in self.models.panels.items()},
                "choices": self.models.choice_info(), "examples": list(EXAMPLES),
                "limits": {"max_bytes": self.max_bytes, "max_pixels": self.max_pixels, "work_side": self.work_side}}

    def example(self, name: str) -> bytes:
        """The JPEG of scikit-image's photo ``name`` (encoded once)."""
        if name not in EXAMPLES:
            raise UploadError(f"no example {name!r}; the examples are {', '.join(EXAMPLES)}", 404)
        if name not in self.examples:
            import skimage.data

            self.examples[name] = _jpeg(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"), 92)
        return self.examples[name]


class Handler(BaseHTTPRequestHandler):
    """Routes of :class:`ServeServer` (see the module docstring)."""

    server: ServeServer
    server_version = "pvtv2-serve"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("the client went away before the answer")

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": " ".join(message.split())}, status)  # one line

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except UploadError as e:
            self._error(e.status, str(e))
        except DataError as e:
            self._error(400, str(e))
        except Exception as e:  # noqa: BLE001 - the page must get a line, the log the traceback
            log.exception("internal error on %s", self.path)
            self._error(500, f"internal error: {type(e).__name__}: {e}")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._guard(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guard(self._post)

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ASSETS:
            name, ctype = ASSETS[path]
            self._send(200, resources.files(__package__).joinpath(name).read_bytes(), f"{ctype}; charset=utf-8")
        elif path == "/api/info":
            self._json(self.server.info())
        elif path.startswith("/api/example/") and path.endswith(".jpg"):
            self._send(200, self.server.example(path[len("/api/example/"):-4]), "image/jpeg")
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._error(404, f"no page {path}")

    def _body(self, limit: int) -> bytes:
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise UploadError("the request has no Content-Length", 411) from None
        if n > limit:
            self.close_connection = True
            left = n
            while left > 0 and n <= 4 * limit:  # drain what the client sends so that it reads the answer
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
            raise UploadError(f"the file is {n / 2**20:.1f} MB: the limit is {limit / 2**20:g} MB", 413)
        return self.rfile.read(n)

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        srv = self.server
        if path == "/api/image":
            t0 = time.perf_counter()
            image, note = decode_upload(self._body(srv.max_bytes), max_bytes=srv.max_bytes,
                                        max_pixels=srv.max_pixels)
            work = working_copy(image, srv.work_side)
            if work.size != image.size:
                note += f"; shrunk to {work.width}x{work.height} for the models"
            preview = "data:image/jpeg;base64," + base64.b64encode(_jpeg(work)).decode("ascii")
            self._json({"id": srv.store.add(work), "width": work.width, "height": work.height,
                        "original": list(image.size), "note": note, "preview": preview,
                        "ms": round(1000 * (time.perf_counter() - t0), 1)})
            return
        if path == "/api/model":
            try:
                req = json.loads(self._body(1 << 16) or b"{}")
                panel, choice = str(req["panel"]), str(req["choice"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise UploadError('bad request to /api/model: expected JSON {"panel": ..., "choice": ...} '
                                  f"({type(e).__name__}: {e})") from None
            t0 = time.perf_counter()
            answer = tasks.switch(srv.models, panel, choice)
            self._json({**answer, "ms": round(1000 * (time.perf_counter() - t0), 1)})
            return
        run = {"/api/classify": predict.classify, "/api/detect": predict.detect, "/api/segment": predict.segment}
        if path not in run and path != "/api/attention":
            self._error(404, f"no API {path}")
            return
        try:
            req = json.loads(self._body(1 << 16) or b"{}")
            key = str(req["id"])
            query = (float(req["y"]), float(req["x"])) if path == "/api/attention" else None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            want = '{"id": ..., "y": ..., "x": ...}' if path == "/api/attention" else '{"id": ...}'
            raise UploadError(f"bad request to {path}: expected JSON {want} ({type(e).__name__}: {e})") from None
        image = srv.store.get(key)
        if query is not None:
            self._json(predict.attention(srv.models, image, *query))
        else:
            self._json(run[path](srv.models, image))


def make_server(served: tasks.Models, host: str = "127.0.0.1", port: int = 0, **limits: int) -> ServeServer:
    """A server on ``host:port`` (port 0: a free one; see :attr:`ServeServer.url`), not yet serving: call
    ``serve_forever()`` (in a thread for tests) and ``shutdown()``; ``limits``: ``max_bytes``, ``max_pixels``,
    ``work_side``."""
    return ServeServer((host, port), served, **limits)
