"""The web dashboard: its pages, its static files, and its JSON/SSE routes under /sage/v1.

`register(app, services, keyring)` (called once by `app.create_app`) adds, unless
`[http].dashboard = false`:

- `GET /` and `GET /ui`: the dashboard page; with API keys set, only the login page (the key is
  kept in the browser's session storage and sent as `Authorization: Bearer`);
- `GET /ui/static/<file>`: the HTML, CSS and JavaScript modules shipped in
  `sage_daemon/http/static/` (uPlot vendored under `vendor/uplot/`), read once at start-up;
- `/sage/v1/...`: the data and the actions. Each route calls the RPC handler of the same name
  (`rpc/handlers.make_handlers`): one implementation for `sagectl`, the dashboard and the tests.
  The caller is an admin peer once it passed the key check (a `user` peer when the door has no
  keys and listens beyond loopback: then it may do what a `[rpc].group` member may). Streaming
  handlers (job.logs, job.watch) become server-sent events; the timeline of the plane
  (http/timeline.py) is one SSE stream fed from a shared buffer.

Routes stay thin: they decode, call a handler, encode. Every dashboard reply carries a strict
Content-Security-Policy (no inline script or style, nothing from elsewhere) and `nosniff`; the
pages build their DOM with `textContent`, never with HTML from data.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import msgspec
import trio
from quart import Response, request
from quart_trio import QuartTrio

from sage_client import protocol as p
from sage_daemon.core.errors import ControlPlaneError
from sage_daemon.http.auth import KeyRing
from sage_daemon.http.errors import ApiError, from_exception
from sage_daemon.http.timeline import Timeline
from sage_daemon.rpc.handlers import make_handlers
from sage_daemon.rpc.server import USER_METHODS, Peer, ReplyStream, RpcError
from sage_daemon.services import Services

logger = logging.getLogger("sage.http")

STATIC_DIR = Path(__file__).parent / "static"
PAGES = ("/", "/ui", "/ui/")
STATIC_PREFIX = "/ui/static/"
API_PREFIX = "/sage/v1"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_STREAM_BUFFER = 64  # items a slow browser may lag behind a streaming handler before it waits
ANONYMOUS_UID = -1  # the uid of an HTTP caller on a door with no keys beyond loopback (a `user` peer)

# RPC error codes the handlers raise themselves (RpcError), as HTTP statuses.
_RPC_STATUS = {
    p.ErrorCode.INVALID_PARAMS: 400, p.ErrorCode.PERMISSION_DENIED: 403, p.ErrorCode.NOT_FOUND: 404,
    p.ErrorCode.MODEL_NOT_FOUND: 404, p.ErrorCode.INVALID_STATE: 409, p.ErrorCode.UNAVAILABLE: 503,
}


def is_dashboard_path(path: str) -> bool:
    return path in PAGES or path.startswith(STATIC_PREFIX) or path == API_PREFIX or path.startswith(API_PREFIX + "/")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class StaticFiles:
    """The shipped files, read once: name → (bytes, content type, ETag). Only these are served,
    so no path from a request ever reaches the file system."""

    def __init__(self, root: Path = STATIC_DIR):
        self.files: dict[str, tuple[bytes, str, str]] = {}
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                data = path.read_bytes()
                kind = _CONTENT_TYPES.get(path.suffix, "text/plain; charset=utf-8")
                self.files[path.relative_to(root).as_posix()] = (data, kind, '"' + hashlib.sha256(data).hexdigest()[:20] + '"')

    def response(self, name: str) -> Response:
        entry = self.files.get(name)
        if entry is None:
            raise ApiError(404, f"no dashboard file {name!r}", code="unknown_route")
        data, kind, etag = entry
        if request.headers.get("If-None-Match") == etag:
            return Response(b"", status=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
        return Response(data, status=200, content_type=kind, headers={"ETag": etag, "Cache-Control": "no-cache"})


class HttpReply(ReplyStream):
    """The RPC handlers' ReplyStream for an HTTP caller: who asked, and where streamed items go
    (instead of the RPC connection's Item frames)."""

    def __init__(self, peer: Peer, send: Callable[[Any], Awaitable[None]] | None = None):  # no RPC connection
        self.peer = peer
        self._send = send

    async def send(self, data: Any) -> None:
        if self._send is None:
            raise RuntimeError("this reply does not stream")
        await self._send(data)


def sse_event(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


def api_error(exc: BaseException) -> ApiError | None:
    """An RpcError or a typed error as the door's ApiError; None for a bug."""
    if isinstance(exc, RpcError):
        return ApiError(_RPC_STATUS.get(exc.code, 500), exc.message, code=exc.code)
    return from_exception(exc)


class HandlerStream:
    """A streaming RPC handler as a server-sent-events body: each `reply.send(item)` becomes an
    `item_event` event, the handler's result an `end_event` event, an error an `error` event.
    The handler runs as a task in the app's nursery; closing the body (the client went away, or
    Quart finished sending) cancels it."""

    def __init__(self, nursery: trio.Nursery, handler: Any, params: Any, peer: Peer, item_event: str, end_event: str):
        self._send, self._receive = trio.open_memory_channel[tuple[str, Any]](_STREAM_BUFFER)
        self._scope = trio.CancelScope()
        self._item_event = item_event
        self._end_event = end_event
        self._first: bytes | None = None
        self._done = False
        nursery.start_soon(self._run, handler, params, HttpReply(peer, self._item))

    async def _item(self, data: Any) -> None:
        await self._send.send(("item", msgspec.to_builtins(data)))

    async def _run(self, handler: Any, params: Any, reply: HttpReply) -> None:
        with self._scope:
            async with self._send:
                try:
                    try:
                        outcome: tuple[str, Any] = ("end", msgspec.to_builtins(await handler(params, reply)))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # the reader is gone
                    except Exception as exc:
                        api = api_error(exc)
                        if api is None:
                            logger.error("dashboard stream failed", exc_info=exc)
                            api = ApiError(500, "internal server error; the daemon's log has the details", code="internal_error")
                        outcome = ("error", api)
                    await self._send.send(outcome)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    def _encode(self, kind: str, data: Any) -> bytes:
        if kind == "item":
            return sse_event(self._item_event, data)
        self._done = True
        if kind == "end":
            return sse_event(self._end_event, data)
        return sse_event("error", msgspec.to_builtins(cast(ApiError, data).body()))

    async def first(self) -> None:
        """Wait for the first event: an error before any item is raised (an HTTP status)."""
        try:
            kind, data = await self._receive.receive()
        except trio.EndOfChannel:
            raise ApiError(500, "the stream ended without a reply", code="internal_error") from None
        if kind == "error":
            await self.aclose()
            raise cast(ApiError, data)
        self._first = self._encode(kind, data)

    def __aiter__(self) -> HandlerStream:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._done:
            raise StopAsyncIteration
        try:
            kind, data = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        return self._encode(kind, data)

    async def aclose(self) -> None:
        self._scope.cancel()
        await self._receive.aclose()


class TickStream:
    """The timeline as server-sent events: the history first, then one `tick` a second with the
    points this reader has not seen and the plane's state. Ends when the daemon drains."""

    def __init__(self, timeline: Timeline, services: Services):
        self.timeline = timeline
        self.services = services
        self.seq = 0
        self.closed = False

    def __aiter__(self) -> TickStream:
        return self

    async def __anext__(self) -> bytes:
        timeline = self.timeline
        if self.closed or not self.services.lifecycle.accepting:
            raise StopAsyncIteration
        with trio.move_on_after(max(3 * timeline.interval_s, 1.0)):
            await timeline.wait_after(self.seq)
        if not self.services.lifecycle.accepting:
            raise StopAsyncIteration
        if timeline.seq <= self.seq:
            return b": idle\n\n"  # the sampler is late: a comment keeps proxies and the reader awake
        tick = timeline.tick(self.seq)
        self.seq = timeline.seq
        return sse_event("tick", tick)

    async def aclose(self) -> None:
        self.closed = True


class _Policy(msgspec.Struct, forbid_unknown_fields=True):
    name: str


def register(app: QuartTrio, services: Services, keyring: KeyRing) -> Timeline | None:
    """Add the dashboard to `app` (nothing when `[http].dashboard` is false); returns its timeline."""
    if not services.config.http.dashboard:
        return None
    handlers = make_handlers(services)
    static = StaticFiles()
    admin_peer = Peer(uid=os.geteuid(), role="admin", pid=os.getpid(), gid=os.getegid())
    anonymous_peer = Peer(uid=ANONYMOUS_UID, role="user", pid=0, gid=-1)
    local_names = {socket.gethostname().lower(), socket.getfqdn().lower()}

    async def view(method: str, params: Any = None) -> Any:
        return await handlers[method](params if params is not None else p.Empty(), HttpReply(admin_peer))

    timeline = Timeline(services, {name: (lambda name=name: view(name)) for name in ("models", "queue", "status")} | {"policy": lambda: view("policy.get")})

    @app.before_serving
    async def _start_sampler() -> None:
        app.nursery.start_soon(timeline.run)

    def door_is_loopback() -> bool:
        host = urlsplit(services.http_url).hostname or services.config.http.host
        return _is_loopback(host)

    def peer() -> Peer:
        """Who the caller is, for the handlers: with keys, it passed the key check (admin)."""
        if keyring.keys() or door_is_loopback():
            return admin_peer
        return anonymous_peer

    @app.before_request
    async def _dashboard_access() -> None:
        path = request.path
        if not is_dashboard_path(path) or path.startswith(STATIC_PREFIX):
            return
        if path.startswith(API_PREFIX):
            keyring.check(request.headers.get("Authorization"))
        if not keyring.keys():
            # No keys: answer only requests addressed to this host by IP, localhost or its own
            # name, so a web page elsewhere cannot reach the dashboard through a DNS name that it
            # points at 127.0.0.1 (DNS rebinding).
            host = (urlsplit("//" + request.headers.get("Host", "")).hostname or "").lower()
            if not (_is_ip(host) or _is_loopback(host) or host in local_names or host == services.config.http.host.lower()):
                raise ApiError(403, f"the dashboard answers requests to an IP address, localhost or {socket.gethostname()} only, not {host!r}; or set http.api_keys", code="host_not_allowed")

    @app.after_request
    async def _dashboard_headers(response: Response) -> Response:
        if is_dashboard_path(request.path):
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            if request.path.startswith(API_PREFIX):
                response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def call(method: str, params: dict[str, Any] | None = None) -> Any:
        """The RPC handler `method` with `params` (checked as the RPC door checks them), as the caller."""
        who = peer()
        if not who.admin and method not in USER_METHODS:
            raise ApiError(403, f"{method} needs an API key: this door has none and listens beyond loopback; set http.api_keys", code="permission_denied")
        try:
            typed: Any = msgspec.convert(params or {}, p.METHODS[method].params)
        except msgspec.ValidationError as exc:
            raise ApiError(400, f"invalid params for {method}: {exc}", code="invalid_params") from None
        try:
            return await handlers[method](typed, HttpReply(who))
        except (RpcError, ControlPlaneError) as exc:
            raise cast(ApiError, api_error(exc)) from None

    async def stream(method: str, params: dict[str, Any], item_event: str, end_event: str) -> Response:
        """A streaming RPC handler as SSE; an error before its first item is the HTTP status."""
        from sage_daemon.http.app import _BODIES  # the connection's list of bodies it closes

        who = peer()
        if not who.admin and method not in USER_METHODS:
            raise ApiError(403, f"{method} needs an API key", code="permission_denied")
        try:
            typed: Any = msgspec.convert(params, p.METHODS[method].params)
        except msgspec.ValidationError as exc:
            raise ApiError(400, f"invalid params for {method}: {exc}", code="invalid_params") from None
        body = HandlerStream(app.nursery, handlers[method], typed, who, item_event, end_event)
        cast(dict[str, Any], request.scope).setdefault(_BODIES, []).append(body)
        await body.first()
        return Response(body, status=200, content_type="text/event-stream", headers=SSE_HEADERS)

    async def body() -> dict[str, Any]:
        if request.mimetype != "application/json":
            # Also what keeps a page elsewhere from posting here: a JSON body needs CORS' preflight.
            raise ApiError(415, f"send the request body as application/json, not {request.mimetype or 'no content type'}", code="unsupported_media_type", param="Content-Type")
        data = await request.get_data(as_text=False)
        try:
            value = msgspec.json.decode(data) if data else {}
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(value, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        return value

    def ok(value: Any) -> Response:
        return Response(msgspec.json.encode(value), status=200, content_type="application/json")

    def query_int(name: str, default: int) -> int:
        raw = request.args.get(name)
        if raw in (None, ""):
            return default
        try:
            return int(raw)
        except ValueError:
            raise ApiError(400, f"query parameter {name} must be an integer, not {raw!r}", code="invalid_params", param=name) from None

    def flag(name: str) -> bool:
        return request.args.get(name, "").lower() in ("1", "true", "yes")

    # -- pages and files --------------------------------------------------------------------

    async def page() -> Response:
        return static.response("login.html" if keyring.keys() else "index.html")

    app.get("/", endpoint="dashboard_root")(page)
    app.get("/ui", endpoint="dashboard_ui")(page)
    app.get("/ui/", endpoint="dashboard_ui_slash")(page)

    @app.get("/ui/static/<path:name>")
    async def dashboard_static(name: str) -> Response:
        return static.response(name)

    # -- the daemon -------------------------------------------------------------------------

    @app.get(API_PREFIX + "/session")
    async def dashboard_session() -> Response:
        who = peer()
        return ok({"keys": bool(keyring.keys()), "role": who.role, "interval_s": timeline.interval_s})

    @app.get(API_PREFIX + "/overview")
    async def dashboard_overview() -> Response:
        status, node, version, policy = await call("status"), await call("nodes"), await call("version"), await call("policy.get")
        return ok({"status": status, "node": node, "version": version, "policy": policy.policy, "policies": p.POLICY_NAMES, "timeline": timeline.points[-1] if timeline.points else None})

    @app.get(API_PREFIX + "/models")
    async def dashboard_models() -> Response:
        return ok(await call("models"))

    @app.post(API_PREFIX + "/models/<path:name>/load")
    async def dashboard_load(name: str) -> Response:
        await body()
        row = await call("load", {"name": name})
        timeline.poke()
        return ok(row)

    @app.post(API_PREFIX + "/models/<path:name>/unload")
    async def dashboard_unload(name: str) -> Response:
        await body()
        row = await call("unload", {"name": name})
        timeline.poke()
        return ok(row)

    @app.post(API_PREFIX + "/models/pull")
    async def dashboard_pull() -> Response:
        """Pull from the Hugging Face Hub: `progress` events, then `done` with where it lies."""
        return await stream("models.pull", await body(), "progress", "done")

    @app.post(API_PREFIX + "/models/add")
    async def dashboard_add() -> Response:
        row = await call("models.add", await body())
        timeline.poke()
        return ok(row)

    @app.get(API_PREFIX + "/queue")
    async def dashboard_queue() -> Response:
        return ok(await call("queue"))

    @app.get(API_PREFIX + "/policy")
    async def dashboard_policy() -> Response:
        return ok(await call("policy.get"))

    @app.post(API_PREFIX + "/policy")
    async def dashboard_set_policy() -> Response:
        data = await body()
        result = await call("policy.set", data)
        timeline.poke()
        return ok(result)

    @app.get(API_PREFIX + "/timeline")
    async def dashboard_timeline() -> Response:
        return ok(timeline.tick(query_int("after", 0)))

    @app.get(API_PREFIX + "/timeline/stream")
    async def dashboard_timeline_stream() -> Response:
        return Response(TickStream(timeline, services), status=200, content_type="text/event-stream", headers=SSE_HEADERS)

    # -- jobs and collections ---------------------------------------------------------------

    @app.get(API_PREFIX + "/jobs")
    async def dashboard_jobs() -> Response:
        return ok(await call("job.list", {"state": request.args.get("state", ""), "limit": query_int("limit", 50)}))

    @app.post(API_PREFIX + "/jobs")
    async def dashboard_submit() -> Response:
        return ok(await call("job.submit", await body()))

    @app.get(API_PREFIX + "/jobs/<int:job_id>")
    async def dashboard_job(job_id: int) -> Response:
        return ok(await call("job.show", {"id": job_id}))

    @app.post(API_PREFIX + "/jobs/<int:job_id>/cancel")
    async def dashboard_cancel(job_id: int) -> Response:
        await body()
        return ok(await call("job.cancel", {"id": job_id}))

    @app.post(API_PREFIX + "/jobs/<int:job_id>/retry")
    async def dashboard_retry(job_id: int) -> Response:
        await body()
        return ok(await call("job.retry", {"id": job_id}))

    @app.get(API_PREFIX + "/jobs/<int:job_id>/logs")
    async def dashboard_logs(job_id: int) -> Response:
        return await stream("job.logs", {"id": job_id, "follow": flag("follow"), "after": query_int("after", 0)}, "log", "end")

    @app.get(API_PREFIX + "/jobs/<int:job_id>/watch")
    async def dashboard_watch(job_id: int) -> Response:
        interval = request.args.get("interval_s", "0.5")
        try:
            interval_s = float(interval)
        except ValueError:
            raise ApiError(400, f"query parameter interval_s must be a number, not {interval!r}", code="invalid_params", param="interval_s") from None
        return await stream("job.watch", {"id": job_id, "interval_s": interval_s, "results": query_int("results", 0)}, "job", "end")

    @app.get(API_PREFIX + "/collections")
    async def dashboard_collections() -> Response:
        return ok(await call("collection.list"))

    @app.get(API_PREFIX + "/collections/<path:name>")
    async def dashboard_collection(name: str) -> Response:
        return ok(await call("collection.show", {"name": name}))

    return timeline
