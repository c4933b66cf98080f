"""What the plugin does on RabbitMQ, connection by connection.

`Engine` keeps one `Connection` per `[connections.NAME]` lessor has
configured: its checked settings and its management API session. Nothing
else is kept: roles arrive with every call, and a restarted plugin is
configured again before any other call. Each operation takes a `Deadline`
and raises `PluginError`; the gRPC layer (service.py) does the rest.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from . import amqp, errors
from .client import Deadline, Management
from .config import ConnectionSettings, RoleSettings

log = logging.getLogger("lessor_rabbitmq")

# How long the clean-up after a failed create may take, within the call's
# gRPC deadline (which runs a few seconds past operation_timeout).
CLEANUP_SECONDS = 5.0


@dataclass
class Connection:
    settings: ConnectionSettings
    api: Management


class Engine:
    def __init__(self) -> None:
        # Held only to read or swap the map (building a session does no I/O).
        self._lock = threading.Lock()
        self._connections: dict[str, Connection] = {}

    def configure(self, settings: ConnectionSettings) -> None:
        """(Re)builds a connection. The same settings again change nothing
        (calls in flight keep their session); new ones (a rotated admin
        password) get a new session, and the old one is closed."""
        with self._lock:
            old = self._connections.get(settings.name)
            if old is not None and old.settings == settings:
                log.debug("connection %s configured again, unchanged", settings.name)
                return
            self._connections[settings.name] = Connection(settings, Management(settings))
        if old is not None:
            old.api.close()
        log.info(
            "connection %s configured: %s as %s (AMQP logins at %s:%d)",
            settings.name,
            settings.api_url,
            settings.username,
            settings.amqp_host,
            settings.amqp_port,
        )

    def connection(self, name: str) -> Connection:
        with self._lock:
            connection = self._connections.get(name)
        if connection is None:
            raise errors.internal(f"connection {name} was never configured")
        return connection

    def close(self) -> None:
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            connection.api.close()

    # -- operations ---------------------------------------------------------

    def verify(self, name: str, deadline: Deadline) -> None:
        """The admin logs in and may manage users (the administrator tag)."""
        connection = self.connection(name)
        me = connection.api.whoami(deadline)
        tags = me.get("tags", [])
        if isinstance(tags, str):  # before 3.9: a comma-separated string
            tags = [t for t in tags.split(",") if t]
        if "administrator" not in tags:
            admin = connection.settings.username
            raise errors.rejected(
                f"{admin} has tags {tags or 'none'}: managing users needs the administrator tag"
            )
        version = connection.api.overview(deadline).get("rabbitmq_version", "unknown")
        log.info("connection %s verified: RabbitMQ %s", name, version)

    def create(self, name: str, role: RoleSettings, username: str, password: str, deadline: Deadline) -> None:
        """Makes `username` with `role`'s tags and permissions, or nothing.

        A failure after the user was made deletes it before answering, so a
        vhost that does not exist leaves no user behind (lessor revokes
        regardless, which is then a no-op).
        """
        api = self.connection(name).api
        api.put_user(username, password, role.tags, deadline)
        try:
            for vhost, permission in role.vhosts.items():
                api.put_permissions(vhost, username, permission, deadline)
            for vhost, exchanges in role.vhost_topics.items():
                for exchange, permission in exchanges.items():
                    api.put_topic_permissions(vhost, username, exchange, permission, deadline)
        except errors.PluginError as failure:
            try:
                api.delete_user(username, deadline.for_cleanup(CLEANUP_SECONDS))
            except errors.PluginError as cleanup:
                log.warning(
                    "user %s was made but not deleted after a failed create: %s", username, cleanup.message
                )
            raise failure
        log.info("created user %s on connection %s (vhosts %s)", username, name, ", ".join(role.vhosts))

    def revoke(self, name: str, username: str, deadline: Deadline) -> None:
        """Deletes the user, then closes its connections. Idempotent.

        The user goes first: closed first, an application could log in
        again in between. RabbitMQ 3.10 closes a deleted user's connections
        itself (CONNECTION_FORCED); closing them again covers versions and
        nodes that do not, and a second call (after a failure closing them)
        finds the user gone and still closes them.
        """
        api = self.connection(name).api
        existed = api.delete_user(username, deadline)
        api.close_connections(username, deadline)
        if existed:
            log.info("revoked user %s on connection %s", username, name)
        else:
            log.info("user %s on connection %s was already gone", username, name)

    def revoke_batch(self, name: str, usernames: list[str], deadline: Deadline) -> None:
        api = self.connection(name).api
        deleted = api.delete_users(usernames, deadline)
        for username in usernames:
            api.close_connections(username, deadline)
        log.info(
            "revoked %d users on connection %s in one batch (%d already gone)",
            deleted,
            name,
            len(usernames) - deleted,
        )

    def list_users(self, name: str, prefix: str, deadline: Deadline) -> list[str]:
        return sorted(u for u in self.connection(name).api.list_users(deadline) if u.startswith(prefix))

    def set_password(self, name: str, username: str, password: str, deadline: Deadline) -> None:
        """A new password for an existing user, its tags kept (PUT replaces
        both)."""
        api = self.connection(name).api
        user = api.get_user(username, deadline)
        if user is None:
            raise errors.rejected(f"user {username} does not exist")
        tags = user.get("tags", [])
        if isinstance(tags, str):
            tags = [t for t in tags.split(",") if t]
        api.put_user(username, password, tuple(tags), deadline, what=f"setting the password of {username}")
        log.info("set a new password for %s on connection %s", username, name)

    def test_login(self, name: str, username: str, password: str, deadline: Deadline) -> None:
        amqp.test_login(self.connection(name).settings, username, password, deadline)

    def end_sessions(self, name: str, username: str, deadline: Deadline) -> None:
        self.connection(name).api.close_connections(username, deadline)
        log.info("closed the connections of %s on connection %s", username, name)
