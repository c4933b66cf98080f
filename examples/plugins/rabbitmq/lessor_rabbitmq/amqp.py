"""A real AMQP 0-9-1 login, for TestLogin.

The management API can say that a user exists, not that its password
works: `test_login` opens a connection of its own with pika, as an
application would, and closes it at once. Authentication is what is
tested: a user that logs in but may not open the default vhost "/" (its
role grants others) has a working password, and passes.
"""

from __future__ import annotations

import ssl

import pika
import pika.exceptions

from . import errors
from .client import Deadline
from .config import ConnectionSettings


def test_login(settings: ConnectionSettings, username: str, password: str, deadline: Deadline) -> None:
    what = f"logging in as {username} over AMQP at {settings.amqp_host}:{settings.amqp_port}"
    timeout = deadline.remaining(what)
    ssl_options = None
    if settings.amqp_tls:
        context = ssl.create_default_context(cafile=settings.tls_ca_file)
        ssl_options = pika.SSLOptions(context, server_hostname=settings.amqp_host)
    parameters = pika.ConnectionParameters(
        host=settings.amqp_host,
        port=settings.amqp_port,
        virtual_host="/",
        credentials=pika.PlainCredentials(username, password, erase_on_connect=True),
        ssl_options=ssl_options,
        connection_attempts=1,
        retry_delay=0,
        socket_timeout=timeout,
        stack_timeout=timeout,
        blocked_connection_timeout=timeout,
        # A connection that lives for a moment needs no heartbeats.
        heartbeat=0,
        client_properties={"connection_name": "lessor test login"},
    )
    try:
        connection = pika.BlockingConnection(parameters)
    except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError):
        raise errors.rejected(f"{what}: login refused") from None
    except pika.exceptions.ProbableAccessDeniedError:
        return  # authenticated; only the vhost "/" is not the user's
    except pika.exceptions.AMQPConnectionError as e:
        raise errors.unavailable(f"{what}: {errors.scrub(_cause(e), password)}") from None
    except (OSError, ssl.SSLError) as e:
        raise errors.unavailable(f"{what}: {errors.scrub(str(e), password)}") from None
    try:
        connection.close()
    except pika.exceptions.AMQPError:
        pass  # logged in; how the close went does not matter


def _cause(e: pika.exceptions.AMQPConnectionError) -> str:
    """pika wraps the real failure (refused, timed out) in its args."""
    inner = e.args[0] if e.args else e
    return str(getattr(inner, "exception", None) or inner) or type(inner).__name__
