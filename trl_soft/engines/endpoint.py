"""HTTP to one vLLM server over TCP or a Unix socket (`Endpoint`, standard library only): one connection per request,
the API key when one is set, `ServerUnreachable` when no answer comes.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from ..errors import EngineError, ServerUnreachable
from ..security import redact_url

CONNECT_TIMEOUT = 10.0


# ---- talking HTTP over TCP or a Unix socket ----------------------------------------------------------------------
class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(min(self.timeout, CONNECT_TIMEOUT))
        self.sock.connect(self.socket_path)
        self.sock.settimeout(self.timeout)


class Endpoint:
    """One server: an http(s) URL or 'unix:/path/to.sock', with the API key to send (if any). One connection per
    request (standard library only), so any number of threads can use it at once."""

    def __init__(self, url: str, api_key: str | None = None):
        self.url, self.api_key = url, api_key
        self.label = redact_url(url)
        if url.startswith("unix:"):
            self.socket_path: str | None = url[len("unix:"):]
            self.prefix = ""
        else:
            parts = urlsplit(url)
            self.socket_path = None
            self.https, self.host, self.port = parts.scheme == "https", parts.hostname, parts.port
            self.prefix = parts.path.rstrip("/")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.socket_path is not None:
            return _UnixHTTPConnection(self.socket_path, timeout)
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=timeout)

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0, auth: bool = True
    ) -> tuple[int, bytes, str]:
        """(status, body, content type); `ServerUnreachable` when no answer comes."""
        payload = json.dumps(body).encode() if body is not None else b""
        host = "localhost" if self.socket_path is not None else f"{self.host}:{self.port}" if self.port else self.host
        headers = {"Host": host, "Connection": "close", "Content-Length": str(len(payload))}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if auth and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        head = f"{method} {self.prefix + path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        connection = self._connection(timeout)
        try:
            connection.connect()
            try:  # head and body in one write: a server may answer (401, 404) and close before reading a second one
                connection.sock.sendall(head.encode() + b"\r\n" + payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it answered before reading everything: its answer is still to be read
            response = http.client.HTTPResponse(connection.sock, method=method)
            response.begin()
            return response.status, response.read(), response.getheader("Content-Type") or ""
        except (OSError, http.client.HTTPException) as err:
            raise ServerUnreachable(f"{type(err).__name__}: {err}") from err
        finally:
            connection.close()

    def models(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The server's `/v1/models` list (`ServerUnreachable`, or `EngineError` for an answer that is not one)."""
        status, data, _ = self.request("GET", "/v1/models", timeout=timeout)
        if status in (401, 403):
            raise EngineError(
                f"`vllm_server_api_key_env`: the vLLM server at {self.label} refuses the request (HTTP {status}): "
                "set `vllm_server_api_key_env` to the name of the environment variable holding its API key."
            )
        try:
            if status != 200:
                raise ValueError(f"HTTP {status}")
            return list(json.loads(data)["data"])
        except (ValueError, KeyError, TypeError) as err:
            raise EngineError(
                f"`vllm_server_base_url`: {self.label} does not answer like a vLLM server ({err})."
            ) from None
