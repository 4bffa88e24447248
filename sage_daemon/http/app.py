"""The HTTP door: a Quart-Trio app. Routes translate HTTP into calls on the services, nothing more."""

from __future__ import annotations

import platform

import msgspec
from quart import Response
from quart_trio import QuartTrio

from sage_client._version import __version__
from sage_daemon.services import Services


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status=status, content_type="application/json", headers=headers)


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("sage_daemon")
    app.config["MAX_CONTENT_LENGTH"] = services.config.http.max_body_bytes

    @app.get("/health")
    async def health() -> Response:
        state = services.lifecycle.state
        reasons = [] if state == "serving" else [f"daemon is {state}"]
        body = {"status": "ok" if not reasons else "unavailable", "reasons": reasons, "version": __version__}
        return json_response(body, 200 if not reasons else 503)

    @app.get("/version")
    async def version() -> Response:
        return json_response({"version": __version__, "python": platform.python_version()})

    return app
