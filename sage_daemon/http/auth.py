"""The HTTP door's API keys: who may call `/v1/*` (and the operational routes when
`http.public_health` is false)."""

from __future__ import annotations

import hmac
import logging
import os

from sage_daemon.core.logging import log
from sage_daemon.http.errors import ApiError
from sage_daemon.services import Services

logger = logging.getLogger("sage.http")


class KeyRing:
    """The API keys in force: `http.api_keys` (SAGE_API_KEY included) plus `http.api_key_file`,
    re-read when the file changes. Both keys can change on SIGHUP, so it asks each time."""

    def __init__(self, services: Services):
        self.services = services
        self._file: tuple[str, float, int] | None = None
        self._file_keys: list[bytes] = []

    def keys(self) -> list[bytes]:
        http = self.services.config.http
        keys = [k.encode() for k in http.api_keys if k]
        if http.api_key_file:
            keys += self._read_file(http.api_key_file)
        return keys

    def _read_file(self, path: str) -> list[bytes]:
        try:
            st = os.stat(path)
            stamp = (path, st.st_mtime, st.st_size)
            if stamp != self._file:
                with open(path, encoding="utf-8") as f:
                    lines = [line.strip() for line in f]
                self._file_keys = [line.encode() for line in lines if line and not line.startswith("#")]
                self._file = stamp
        except OSError as exc:
            # A missing key file must not open the door: refuse every key until it is readable.
            log(logger, logging.ERROR, "cannot read http.api_key_file; refusing /v1 requests", path=path, error=exc.strerror)
            return [b"\0unreadable-key-file\0" + os.urandom(16)]
        return self._file_keys

    def check(self, authorization: str | None) -> None:
        """Raise a 401 unless `authorization` carries a configured key (constant-time compare)."""
        keys = self.keys()
        if not keys:
            return
        given = b""
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                given = token.strip().encode()
        ok = False
        for key in keys:  # every key is compared, so timing says nothing about which matched
            ok |= hmac.compare_digest(given, key)
        if not given:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not ok:
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
