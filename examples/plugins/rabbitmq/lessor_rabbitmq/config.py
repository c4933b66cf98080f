"""A connection's and a role's options, checked into settings.

lessor hands the plugin every key of `[connections.NAME]` and
`[roles.NAME]` it does not own itself, as JSON. `parse_connection` and
`parse_role` turn them into frozen settings or into one `ConfigProblem`
per wrong key, named in full so lessor can point at the line: an unknown
key is a problem, as lessor's own config refuses unknown keys.

Role options follow Vault's RabbitMQ secrets engine, written as TOML
tables instead of JSON strings:

    vhosts = { "/" = { configure = "^app-.*", write = ".*", read = ".*" } }
    vhost_topics = { "/" = { "amq.topic" = { write = '^app\\.', read = ".*" } } }
    tags = ["management"]

The permission patterns are checked with Python's `re`. RabbitMQ matches
them with Erlang's `re` (PCRE). The common syntax is the same; the edges
differ: PCRE's `\\K`, `\\z` and `(*VERB)`s are refused here, and `\\Z`
also matches before a final newline in PCRE. A pattern accepted here can
still be refused by RabbitMQ, at issuance, with an error naming the vhost.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import ConfigProblem

# Ports RabbitMQ listens on by default for AMQP 0-9-1, plain and TLS.
AMQP_PORT = 5672
AMQPS_PORT = 5671
# lessor's own default is the same; used when a request carries none.
DEFAULT_OPERATION_TIMEOUT = 30.0


class Secret:
    """A password that does not show itself in a repr, a log or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ConnectionSettings:
    """One `[connections.NAME]` with `plugin = "rabbitmq"`."""

    name: str
    # The management API's base URL, without a trailing slash.
    api_url: str
    # The admin user the plugin logs in to the management API as.
    username: str
    password: Secret
    # Where TestLogin makes its AMQP login.
    amqp_host: str
    amqp_port: int
    amqp_tls: bool
    # A CA bundle for https:// and amqps://; None: the system's.
    tls_ca_file: str | None
    # The longest one backend operation may take, in seconds.
    operation_timeout: float
    # The most HTTP connections kept open to the management API.
    max_connections: int


@dataclass(frozen=True)
class Permission:
    """`configure`, `write` and `read` patterns of one vhost ("" = nothing)."""

    configure: str = ""
    write: str = ""
    read: str = ""


@dataclass(frozen=True)
class TopicPermission:
    """`write` and `read` routing-key patterns on one topic exchange."""

    write: str = ""
    read: str = ""


@dataclass(frozen=True)
class RoleSettings:
    """The RabbitMQ side of one `[roles.NAME]`."""

    vhosts: dict[str, Permission]
    tags: tuple[str, ...] = ()
    # vhost -> exchange -> patterns.
    vhost_topics: dict[str, dict[str, TopicPermission]] = field(default_factory=dict)


CONNECTION_KEYS = ("username", "amqp_url", "tls_ca_file")
ROLE_KEYS = ("vhosts", "tags", "vhost_topics")


def _object(options_json: str, key: str, problems: list[ConfigProblem]) -> dict:
    if not options_json:
        return {}
    try:
        value = json.loads(options_json)
    except ValueError as e:
        problems.append(ConfigProblem(key, f"options are not JSON: {e}"))
        return {}
    if not isinstance(value, dict):
        problems.append(ConfigProblem(key, "options are not a table"))
        return {}
    return value


def _unknown(options: dict, known: tuple[str, ...], prefix: str, problems: list[ConfigProblem]) -> None:
    for key in sorted(options):
        if key not in known:
            problems.append(ConfigProblem(f"{prefix}.{key}", f"unknown key (known: {', '.join(known)})"))


def parse_connection(
    name: str,
    url: str | None,
    password: str | None,
    admin_username: str | None,
    max_connections: int,
    operation_timeout_ms: int,
    options_json: str,
) -> tuple[ConnectionSettings | None, list[ConfigProblem]]:
    """Checks a Configure request's connection; settings only when valid.

    `admin_username` is the user rotate-root switched to, which wins over
    the configured `username`.
    """
    prefix = f"connections.{name}"
    problems: list[ConfigProblem] = []
    options = _object(options_json, prefix, problems)
    _unknown(options, CONNECTION_KEYS, prefix, problems)

    api_url = None
    host = None
    if not url:
        problems.append(
            ConfigProblem(
                f"{prefix}.url", "required: the management API's base URL, e.g. http://127.0.0.1:15672"
            )
        )
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(
                ConfigProblem(f"{prefix}.url", "not an http:// or https:// URL of the management API")
            )
        elif parts.username or parts.password:
            problems.append(
                ConfigProblem(
                    f"{prefix}.url",
                    "holds a user: name the admin in `username`, its password in password_file",
                )
            )
        elif parts.query or parts.fragment:
            problems.append(
                ConfigProblem(f"{prefix}.url", "has a query or fragment; give the API's base URL only")
            )
        else:
            api_url = url.rstrip("/")
            host = parts.hostname

    username = options.get("username")
    if username is None:
        problems.append(
            ConfigProblem(f"{prefix}.username", "required: the RabbitMQ admin user lessor logs in as")
        )
    elif not isinstance(username, str) or not username:
        problems.append(ConfigProblem(f"{prefix}.username", "not a non-empty string"))
    if admin_username:
        username = admin_username

    if not password:
        problems.append(
            ConfigProblem(
                f"{prefix}.password_file", "the admin's password is required (password_file or password_env)"
            )
        )

    amqp = _amqp_address(options.get("amqp_url"), host, f"{prefix}.amqp_url", problems)

    ca = options.get("tls_ca_file")
    if ca is not None:
        if not isinstance(ca, str) or not ca:
            problems.append(ConfigProblem(f"{prefix}.tls_ca_file", "not a path"))
        elif not os.access(ca, os.R_OK) or not os.path.isfile(ca):
            problems.append(ConfigProblem(f"{prefix}.tls_ca_file", f"cannot read {ca}"))

    if problems:
        return None, problems
    timeout = operation_timeout_ms / 1000 if operation_timeout_ms > 0 else DEFAULT_OPERATION_TIMEOUT
    return (
        ConnectionSettings(
            name=name,
            api_url=api_url,
            username=username,
            password=Secret(password),
            amqp_host=amqp[0],
            amqp_port=amqp[1],
            amqp_tls=amqp[2],
            tls_ca_file=ca,
            operation_timeout=timeout,
            max_connections=max(1, max_connections),
        ),
        [],
    )


def _amqp_address(value, default_host: str | None, key: str, problems: list[ConfigProblem]):
    """`host:port`, `amqp://host[:port]` or `amqps://host[:port]`."""
    if value is None:
        return (default_host or "127.0.0.1", AMQP_PORT, False)
    if not isinstance(value, str) or not value:
        problems.append(ConfigProblem(key, "not a string (host:port or amqp://host:port)"))
        return None
    text = value if "://" in value else f"amqp://{value}"
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname or port == -1:
        problems.append(ConfigProblem(key, "not host:port or an amqp:// or amqps:// URL"))
        return None
    if parts.username or parts.password:
        problems.append(ConfigProblem(key, "holds a user; TestLogin logs in as the user it is asked about"))
        return None
    tls = parts.scheme == "amqps"
    return (parts.hostname, port or (AMQPS_PORT if tls else AMQP_PORT), tls)


def parse_role(name: str, options_json: str) -> tuple[RoleSettings | None, list[ConfigProblem]]:
    """Checks a role's options; settings only when valid."""
    prefix = f"roles.{name}"
    problems: list[ConfigProblem] = []
    options = _object(options_json, prefix, problems)
    _unknown(options, ROLE_KEYS, prefix, problems)

    vhosts: dict[str, Permission] = {}
    raw = options.get("vhosts")
    if raw is None:
        problems.append(
            ConfigProblem(
                f"{prefix}.vhosts",
                'required: e.g. vhosts = { "/" = { configure = ".*", write = ".*", read = ".*" } }',
            )
        )
    elif not isinstance(raw, dict) or not raw:
        problems.append(ConfigProblem(f"{prefix}.vhosts", "not a table of at least one vhost"))
    else:
        for vhost, patterns in raw.items():
            key = f"{prefix}.vhosts.{vhost}"
            values = _patterns(patterns, ("configure", "write", "read"), key, vhost, problems)
            if values is not None:
                vhosts[vhost] = Permission(**values)

    tags: list[str] = []
    raw = options.get("tags", [])
    if not isinstance(raw, list):
        problems.append(ConfigProblem(f"{prefix}.tags", 'not a list of strings, e.g. ["management"]'))
    else:
        for i, tag in enumerate(raw):
            if not isinstance(tag, str) or not tag.strip() or "," in tag:
                problems.append(
                    ConfigProblem(f"{prefix}.tags[{i}]", "not a tag (a non-empty string without commas)")
                )
            else:
                tags.append(tag.strip())

    topics: dict[str, dict[str, TopicPermission]] = {}
    raw = options.get("vhost_topics", {})
    if not isinstance(raw, dict):
        problems.append(
            ConfigProblem(f"{prefix}.vhost_topics", "not a table of vhosts, each a table of exchanges")
        )
    else:
        for vhost, exchanges in raw.items():
            key = f"{prefix}.vhost_topics.{vhost}"
            if not vhost:
                problems.append(ConfigProblem(key, "an empty vhost name"))
                continue
            if not isinstance(exchanges, dict) or not exchanges:
                problems.append(ConfigProblem(key, "not a table of at least one exchange"))
                continue
            for exchange, patterns in exchanges.items():
                values = _patterns(patterns, ("write", "read"), f"{key}.{exchange}", exchange, problems)
                if values is not None:
                    topics.setdefault(vhost, {})[exchange] = TopicPermission(**values)

    if problems:
        return None, problems
    return RoleSettings(vhosts=vhosts, tags=tuple(tags), vhost_topics=topics), []


def _patterns(value, names: tuple[str, ...], key: str, what: str, problems: list[ConfigProblem]):
    """A table of regular expressions named `names`, each "" by default."""
    if not what:
        problems.append(ConfigProblem(key, "an empty name"))
        return None
    if not isinstance(value, dict):
        problems.append(ConfigProblem(key, f"not a table of {', '.join(names)} patterns"))
        return None
    before = len(problems)
    _unknown(value, names, key, problems)
    values = {}
    for name in names:
        pattern = value.get(name, "")
        if not isinstance(pattern, str):
            problems.append(ConfigProblem(f"{key}.{name}", "not a string"))
            continue
        try:
            re.compile(pattern)
        except re.error as e:
            problems.append(ConfigProblem(f"{key}.{name}", f"not a valid regular expression: {e}"))
            continue
        values[name] = pattern
    return values if len(problems) == before else None
