"""The running server's HTTP API on this machine, for commands that need the server itself rather
than its database: `appliance notify` (a notification is delivered by the server to the sessions
it holds) and `appliance user del` (the account's open sessions are closed). Called on the loopback
address with the key `serve` writes to DATA_DIR/local-api.key (web/local_key.py)."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass

from appliance.config import Config
from appliance.web.local_key import local_key_path

POLL_SECONDS = 0.25
_LOOPBACK_OR_ANY = {"0.0.0.0", "::", "127.0.0.1", "::1", "localhost"}


class ServerUnreachable(Exception):
    """No server answers on the API port, or it never wrote its local key; str() says which."""


@dataclass
class LocalApi:
    """The running server's HTTP API on this machine, called with its local key."""

    host: str
    port: int
    key: str

    @classmethod
    def for_config(cls, config: Config) -> LocalApi:
        if not config.http.enabled:
            raise ServerUnreachable("the web server is off ([http] enabled = false); the API needs it")
        try:
            key = local_key_path(config.data_dir).read_text().strip()
        except FileNotFoundError:
            raise ServerUnreachable(f"the server is not running ({local_key_path(config.data_dir)} "
                                    "is missing); start it with `appliance serve`") from None
        except OSError as exc:  # e.g. run as another user than the server's: the key is 0600
            raise ServerUnreachable(f"cannot read the server's local API key: {exc}") from None
        return cls(local_host(config.listen), config.http.port, key)

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {"Authorization": f"Bearer {self.key}"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, payload, headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        except ConnectionRefusedError:
            raise ServerUnreachable(f"the server is not running (nothing answers on {self.host} port "
                                    f"{self.port}); start it with `appliance serve`") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ServerUnreachable(f"no usable answer from the server on {self.host} port {self.port}: "
                                    f"{exc}") from None
        finally:
            conn.close()

    def wait_delivered(self, notification_id: int, seconds: float) -> dict:
        """The status once nothing is pending (or it expired), or when `seconds` have passed."""
        deadline = time.monotonic() + seconds
        while True:
            code, status = self.call("GET", f"/api/v1/notifications/{notification_id}")
            if code != 200:
                raise ServerUnreachable(f"notification {notification_id}: {status.get('reason', code)}")
            if status["pending"] == 0 or status["expired"] or time.monotonic() >= deadline:
                return status
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def local_host(listen: list[str]) -> str:
    """Where this machine reaches the server: loopback, unless it listens only on other addresses."""
    if any(address in _LOOPBACK_OR_ANY for address in listen):
        return "::1" if listen == ["::1"] else "127.0.0.1"
    return listen[0]


