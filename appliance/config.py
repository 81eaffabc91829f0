"""The appliance's configuration: embedded defaults, overridden by one TOML file.

Every limit lives here so that it is configurable and documented in one place
(`appliance config show` prints the effective values).
"""

from __future__ import annotations

import dataclasses
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Limits:
    max_stanza_bytes: int = 256 * 1024      # larger stanza: policy-violation stream error
    max_depth: int = 32                     # XML nesting inside a stanza
    connections_per_address: int = 32       # concurrent c2s connections from one IP
    login_failures_per_account: int = 5     # failures in the window before refusing logins
    login_failures_per_address: int = 20
    login_failure_window: float = 300.0     # seconds
    registrations_per_address: int = 5      # in-band sign-ups from one IP within the window
    registration_window: float = 3600.0     # seconds
    handshake_timeout: float = 30.0         # connect to bound resource, seconds
    idle_timeout: float = 900.0             # no byte at all for this long: close
    outbox_stanzas: int = 1000              # queued outgoing stanzas before a reader is "too slow"
    offline_per_user: int = 1000            # stored offline messages per account
    roster_items: int = 2000
    csi_buffer: int = 500                   # XEP-0352: stanzas held for an inactive client before a flush
    blocklist_items: int = 1000             # XEP-0191 blocked JIDs per account


@dataclass
class Keepalive:
    ping_interval: float = 300.0            # server pings a client that was silent this long
    ping_timeout: float = 60.0              # no answer in this time: the link is dead


@dataclass
class StreamManagement:
    resume_timeout: float = 600.0           # XEP-0198: a broken link's session waits this long for the phone
    request_after: int = 5                  # ask for an ack (<r/>) once this many stanzas are unacked...
    request_seconds: float = 30.0           # ...or once the oldest has waited this long


ARCHIVE_MODES = ("always", "never", "roster")


@dataclass
class Archive:
    enabled: bool = True                    # XEP-0313 message archive of one-to-one chats
    retention_days: float = 365.0           # older messages are deleted; 0 keeps them for ever
    default: str = "always"                 # XEP-0441 default until a user sets one: always, never, roster
    max_page: int = 100                     # results per query page, whatever a client asks for


MAX_COMMIT_DELAY_MS = 1000


@dataclass
class Storage:
    commit_delay_ms: float = 10.0           # under load, a commit waits this long for others to share it


@dataclass
class Invites:
    expiry_days: float = 7.0                # an invite made without an explicit expiry lasts this long
    users_may_invite: bool = True           # any user may make contact invites (XEP-0401 ad-hoc command)
    users_may_create_accounts: bool = False  # non-admins may make account invites too


@dataclass
class Http:
    enabled: bool = True                    # invite landing pages (later: admin page, notification API)
    port: int = 5280                        # plain HTTP
    tls_port: int = 5281                    # HTTPS with the XMPP certificate; 0 turns it off
    public_url: str = ""                    # base of links in invites; default http://<public host>:<port>
    max_header_bytes: int = 16384           # request line and headers; larger: the connection is refused
    idle_timeout: float = 5.0               # a connection with no request in progress is closed after this
    read_timeout: float = 30.0              # a request whose next bytes take longer is dropped (slow senders)


@dataclass
class Mdns:
    enabled: bool = True                    # announce _xmpp-client._tcp (and _http._tcp) on the LAN
    instance: str = ""                      # service instance name; default "Chat appliance on <host>"
    interfaces: list[str] = field(default_factory=list)  # addresses to announce on; default: all


@dataclass
class Notifications:
    default_ttl_hours: float = 168.0        # a notification without a time-to-live expires after a week
    max_ttl_days: float = 90.0              # longer time-to-live asked for: 400 with the reason
    max_request_bytes: int = 65536          # API request body; larger: 413
    max_title_chars: int = 200
    max_body_chars: int = 4000


@dataclass
class Push:
    enabled: bool = True                    # XEP-0357 push to app servers
    min_interval_seconds: float = 10.0      # at most one push per device in this time (more are coalesced)
    max_registrations_per_user: int = 10    # devices/app servers one account may enable


@dataclass
class Pep:
    max_items_per_node: int = 256           # XEP-0163: items a node keeps at most ("max" means this)
    max_item_bytes: int = 64 * 1024         # one item's payload, serialised; larger: not-acceptable
    max_nodes_per_user: int = 64            # PEP nodes one account may have


@dataclass
class Admin:
    session_hours: float = 12.0             # a signed-in admin page session lasts this long
    sign_in_failures_per_address: int = 5   # failed sign-ins within the window before 429
    sign_in_window: float = 300.0           # seconds


@dataclass
class Components:
    port: int = 5347                        # XEP-0114 external components (app servers, gateways); 0: off
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    secrets: list[str] = field(default_factory=list)  # "subdomain.DOMAIN=secret" entries; none: off


@dataclass
class Config:
    domain: str = field(default_factory=lambda: socket.gethostname().lower() + ".local")
    data_dir: Path = Path("data")
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0", "::"])
    c2s_port: int = 5222                    # STARTTLS
    c2s_tls_port: int = 5223                # direct TLS, XEP-0368
    require_tls: bool = True                # plaintext only for loopback benchmarks
    allow_registration: bool = False        # XEP-0077 in-band registration
    scram_iterations: int = 10000
    tls_cert: Path | None = None            # default: self-signed, under data_dir
    tls_key: Path | None = None
    log_level: str = "INFO"
    admins: list[str] = field(default_factory=list)
    public_host: str = ""                   # name or address phones connect to; default: a LAN address
    limits: Limits = field(default_factory=Limits)
    keepalive: Keepalive = field(default_factory=Keepalive)
    stream_management: StreamManagement = field(default_factory=StreamManagement)
    archive: Archive = field(default_factory=Archive)
    storage: Storage = field(default_factory=Storage)
    invites: Invites = field(default_factory=Invites)
    http: Http = field(default_factory=Http)
    mdns: Mdns = field(default_factory=Mdns)
    notifications: Notifications = field(default_factory=Notifications)
    push: Push = field(default_factory=Push)
    pep: Pep = field(default_factory=Pep)
    admin: Admin = field(default_factory=Admin)
    components: Components = field(default_factory=Components)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "appliance.sqlite3"

    @property
    def cert_path(self) -> Path:
        return self.tls_cert or self.data_dir / "tls" / "cert.pem"

    @property
    def key_path(self) -> Path:
        return self.tls_key or self.data_dir / "tls" / "key.pem"


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says what to fix."""


def _apply(target: Any, values: dict[str, Any], where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(fields))})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key} must be a table")
            _apply(current, value, f"{where}.{key}")
        else:
            setattr(target, key, _coerce(current, fields[key], value, f"{where}.{key}"))


def _coerce(current: Any, f: dataclasses.Field, value: Any, where: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    if "Path" in kind:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a path string")
        return Path(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where} must be a non-negative number")
        return type(current)(value)
    if isinstance(current, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string")
    return value


def load(path: Path | None = None, **overrides: Any) -> Config:
    """Defaults, then the TOML file, then command-line overrides (those that are not None)."""
    config = Config()
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        _apply(config, values, str(path))
    _apply(config, {k: v for k, v in overrides.items() if v is not None}, "command line")
    config.domain = config.domain.lower()
    if config.archive.default not in ARCHIVE_MODES:
        raise ConfigError(f"archive.default must be one of {', '.join(ARCHIVE_MODES)}")
    if config.storage.commit_delay_ms > MAX_COMMIT_DELAY_MS:
        raise ConfigError(f"storage.commit_delay_ms must be at most {MAX_COMMIT_DELAY_MS} "
                          "(it delays every acknowledgement under load)")
    component_secrets(config.components.secrets, config.domain)  # checked now, not when the server starts
    return config


def component_secrets(entries: list[str], domain: str) -> dict[str, str]:
    """`[components] secrets` (`subdomain.DOMAIN=secret` entries) as {component domain: secret}."""
    found: dict[str, str] = {}
    for entry in entries:
        name, sep, secret = entry.partition("=")
        name = name.strip().lower()
        if not sep or not secret or not name.endswith("." + domain):
            raise ConfigError(f"components.secrets: {name!r} must be written subdomain.{domain}=secret")
        found[name] = secret
    return found


def to_toml(config: Config) -> str:
    """The effective configuration as TOML that `load` reads back."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f.name, value))
        elif value is not None:
            lines.append(f"{f.name} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{f.name} = {_toml_value(getattr(table, f.name))}" for f in dataclasses.fields(table))
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
