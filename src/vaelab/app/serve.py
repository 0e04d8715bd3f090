"""`vaelab serve`: the explorer as a local web app (Starlette routes, served by uvicorn).

The page (app/templates/explorer.html.j2) asks the JSON API below for codes and the PNG endpoints for images; every
number is computed by vaelab.exploration.explorer.Explorer, which validates each request. A refused request is answered
400 with {"error": "<one line>"} (413 for a body over MAX_BODY, 404/405 for an unknown path or method, also as
JSON); the server keeps serving. Binds 127.0.0.1 unless told otherwise.

Starlette and uvicorn are optional (`pip install 'vaelab[serve]'`): they are imported when a server is made.
"""

from __future__ import annotations

import io
import json
import socket

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from vaelab.core.errors import VaelabError
from vaelab.exploration.explorer import BadRequest, Explorer


class TooLarge(VaelabError):
    """A request body over MAX_BODY: answered 413 without reading the rest."""


MAX_BODY = 1 << 20  # bytes of JSON one request may send (64 codes of 512 numbers need about 0.4 MB)
_NEEDS = "vaelab serve needs the optional packages starlette and uvicorn: pip install 'vaelab[serve]'"
_ENV = Environment(loader=PackageLoader("vaelab.app", "templates"), autoescape=select_autoescape(["html.j2"]))


def png(images: np.ndarray) -> bytes:
    """uint8 images (B, H, W, C) -> one PNG, side by side."""
    row = np.concatenate(list(images), axis=1)
    mode = "L" if row.shape[2] == 1 else "RGB"
    buf = io.BytesIO()
    Image.fromarray(row[..., 0] if mode == "L" else row, mode).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _starlette():
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, JSONResponse, Response
        from starlette.routing import Route
    except ImportError:
        raise VaelabError(_NEEDS) from None
    return Starlette, Request, HTMLResponse, JSONResponse, Response, Route


def app(explorer: Explorer, title: str = "vaelab explorer"):
    """The ASGI app for one explorer."""
    Starlette, Request, HTMLResponse, JSONResponse, Response, Route = _starlette()
    page = _ENV.get_template("explorer.html.j2").render(title=title, info=explorer.info())

    async def body(request) -> dict:
        """The JSON object a POST sends, read no further than MAX_BODY bytes: a larger Content-Length is refused
        before any of it is read, and a chunked body is dropped as soon as it passes the limit."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            raise TooLarge(f"request body over {MAX_BODY} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise TooLarge(f"request body over {MAX_BODY} bytes")
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks) or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the request body is not JSON") from None
        except RecursionError:  # '[' * 100000: deeper than the decoder's stack
            raise BadRequest("the request body is nested too deeply") from None
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        return data

    def handler(answer):
        """answer(explorer, data) -> bytes (a PNG) or a dict (JSON); BadRequest -> 400, one line."""

        async def endpoint(request):
            try:
                data = await body(request) if request.method == "POST" else dict(request.query_params)
                out = answer(explorer, data)
            except TooLarge as e:
                return JSONResponse({"error": str(e)}, status_code=413, headers={"Connection": "close"})
            except VaelabError as e:  # BadRequest, and a sampler that cannot fit without data
                return JSONResponse({"error": str(e).splitlines()[0][:300]}, status_code=400)
            if isinstance(out, bytes):
                return Response(out, media_type="image/png", headers={"Cache-Control": "no-store"})
            return JSONResponse(out)

        return endpoint

    routes = [Route("/", lambda request: HTMLResponse(page))]
    for path, method, answer in ENDPOINTS:
        routes.append(Route(path, handler(answer), methods=[method]))

    async def http_error(request, exc):  # 404 and 405 as the JSON every other refusal is
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"[:300]}, exc.status_code)

    return Starlette(routes=routes, exception_handlers={404: http_error, 405: http_error})


def _int(data: dict, key: str, default=None):
    """A query parameter (text) or JSON value as an int when it is one; the explorer validates the rest."""
    v = data.get(key, default)
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            raise BadRequest(f"{key} must be an integer, got {v[:50]!r}") from None
    return v


ENDPOINTS = [  # path, method, answer(explorer, request data)
    ("/api/info", "GET", lambda ex, d: ex.info()),
    (
        "/api/decode",
        "POST",
        lambda ex, d: png(ex.decode(d.get("z"), d.get("class"), d.get("temperature", 0.0), d.get("seed", 0))),
    ),
    ("/api/code", "POST", lambda ex, d: {"z": ex.code(d.get("index"))}),
    ("/api/test", "GET", lambda ex, d: png(ex.test_image(_int(d, "index"))[None])),
    ("/api/random", "POST", lambda ex, d: {"z": ex.random(d.get("source", "prior"), d.get("seed", 0), d.get("class"))}),
    (
        "/api/interpolate",
        "POST",
        lambda ex, d: {"z": ex.interpolate(d.get("a"), d.get("b"), d.get("t"), d.get("mode", "linear"))},
    ),
    ("/api/arithmetic", "POST", lambda ex, d: {"z": ex.arithmetic(d.get("a"), d.get("b"), d.get("c"))}),
    ("/api/traverse", "POST", lambda ex, d: {"z": ex.traverse(d.get("z"), d.get("dim"), d.get("values"))}),
]


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening socket (port 0: any free one); a host or port that cannot be had is one line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # no Nagle delay (inherited by accepted connections on Linux): a response's headers and body leave at once,
        # instead of the body waiting ~40 ms for the client's delayed ACK of the headers
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(128)  # listening now: the address printed next already takes connections (queued until served)
    except OSError as e:
        raise VaelabError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def server(explorer: Explorer, sock: socket.socket, title: str = "vaelab explorer"):
    """A uvicorn server for the explorer on a bound socket; .run(sockets=[sock]) serves until Ctrl-C."""
    try:
        import uvicorn
    except ImportError:
        raise VaelabError(_NEEDS) from None
    config = uvicorn.Config(app(explorer, title), log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config)


def loopback(sock: socket.socket) -> bool:
    """Whether a bound socket listens on this machine only (127.0.0.0/8 or ::1)."""
    import ipaddress

    host = sock.getsockname()[0]
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
