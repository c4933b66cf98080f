"""Failures as the plugin protocol classifies them.

Every operation raises `PluginError` with one of the protocol's kinds
(`Error.Kind` in plugin.proto); the gRPC layer turns it into the `error`
field of the answer, never into a gRPC status. Messages name users and
vhosts but never hold a password: callers pass secrets to `scrub` before
quoting anything RabbitMQ sent back.
"""

from __future__ import annotations

# The protocol's Error.Kind names, spelled as plugin.proto spells them.
UNAVAILABLE = "UNAVAILABLE"
TRANSIENT = "TRANSIENT"
REJECTED = "REJECTED"
INVALID_ROLE = "INVALID_ROLE"
UNSUPPORTED = "UNSUPPORTED"
INTERNAL = "INTERNAL"


class PluginError(Exception):
    """A classified failure of one operation."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def retryable(self) -> bool:
        """Whether lessor will try again (the backend may come back)."""
        return self.kind in (UNAVAILABLE, TRANSIENT)


def unavailable(message: str) -> PluginError:
    """The backend could not be reached or failed on its side (5xx)."""
    return PluginError(UNAVAILABLE, message)


def rejected(message: str) -> PluginError:
    """The backend refused and will refuse again."""
    return PluginError(REJECTED, message)


def invalid_role(message: str) -> PluginError:
    """The role's options are wrong for this plugin."""
    return PluginError(INVALID_ROLE, message)


def unsupported(operation: str) -> PluginError:
    return PluginError(UNSUPPORTED, f"the rabbitmq plugin does not do {operation}")


def internal(message: str) -> PluginError:
    """lessor and the plugin disagree (an unknown connection, a bug)."""
    return PluginError(INTERNAL, message)


class ConfigProblem:
    """One wrong config key, named in full (`roles.app.vhosts./.write`)."""

    __slots__ = ("key", "message")

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message

    def __repr__(self) -> str:
        return f"ConfigProblem({self.key!r}, {self.message!r})"


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with every secret in it replaced, cut to one short line."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."
