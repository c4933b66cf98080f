"""The RabbitMQ management HTTP API, as one connection's admin uses it.

One `Management` per configured connection holds one `requests.Session`
(its pool bounded by the connection's `max_connections`) logged in as the
admin. Every request is bounded by a `Deadline` and every failure is
classified here, once: unreachable, timed out or 5xx is UNAVAILABLE (lessor
retries), a refused login or a 4xx is REJECTED (it will be refused again).
Request bodies carry passwords, so neither they nor a RabbitMQ answer is
ever logged, and a `reason` RabbitMQ sends back is scrubbed of the password
before it goes into a message.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from . import errors
from .config import ConnectionSettings, Permission, TopicPermission


class Deadline:
    """When the current operation must be over.

    `at` is the sooner of the connection's `operation_timeout` and the
    call's gRPC deadline; `hard` is the gRPC deadline alone (lessor gives
    it a few seconds of grace over `operation_timeout`), which bounds the
    clean-up after a failed create.
    """

    def __init__(self, at: float, hard: float | None) -> None:
        self.at = at
        self.hard = hard

    @classmethod
    def start(cls, operation_timeout: float, grpc_remaining: float | None) -> Deadline:
        now = time.monotonic()
        hard = None if grpc_remaining is None else now + grpc_remaining
        at = now + operation_timeout
        return cls(at if hard is None else min(at, hard), hard)

    def remaining(self, what: str) -> float:
        """Seconds left; UNAVAILABLE once none are."""
        left = self.at - time.monotonic()
        if left <= 0.01:
            raise errors.unavailable(f"{what}: the operation timed out")
        return left

    def for_cleanup(self, seconds: float) -> Deadline:
        """A fresh budget of `seconds`, within the gRPC deadline."""
        at = time.monotonic() + seconds
        return Deadline(at if self.hard is None else min(at, self.hard - 0.2), self.hard)


def _path(*segments: str) -> str:
    # Every segment percent-encoded, "/" included: the default vhost is "%2F".
    return "/".join(quote(s, safe="") for s in segments)


class Management:
    """The admin's view of one RabbitMQ node through its management API."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self.base = settings.api_url
        self.admin = settings.username
        self._password = settings.password
        session = requests.Session()
        session.auth = (settings.username, settings.password.reveal())
        session.verify = settings.tls_ca_file or True
        # No proxy or .netrc from the environment: lessor decides where the
        # admin's password goes.
        session.trust_env = False
        session.headers["Accept"] = "application/json"
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=settings.max_connections, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self.session = session

    def close(self) -> None:
        self.session.close()

    def request(
        self,
        method: str,
        path: str,
        what: str,
        deadline: Deadline,
        body=None,
        expect: tuple[int, ...] = (),
        secret: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """One API call. Answers a 2xx or a status in `expect`; raises the rest.

        `what` says what was being done, for messages; `secret` is a
        password in `body`, kept out of any message.
        """
        timeout = deadline.remaining(what)
        url = f"{self.base}/api/{path}"
        try:
            response = self.session.request(
                method, url, json=body, headers=headers, timeout=(timeout, timeout), allow_redirects=False
            )
        except requests.exceptions.SSLError as e:
            raise errors.rejected(
                f"{what}: TLS with the management API at {self.base} failed: {self._scrub(_cause(e), secret)}"
            ) from None
        except requests.Timeout:
            raise errors.unavailable(
                f"{what}: no answer from the management API at {self.base} within {timeout:.1f}s"
            ) from None
        except requests.ConnectionError as e:
            raise errors.unavailable(
                f"{what}: cannot reach the management API at {self.base}: {self._scrub(_cause(e), secret)}"
            ) from None
        except requests.RequestException as e:
            raise errors.unavailable(f"{what}: {self._scrub(_cause(e), secret)}") from None
        status = response.status_code
        if 200 <= status < 300 or status in expect:
            return response
        reason = self._scrub(_reason(response), secret)
        if status == 401:
            raise errors.rejected(f"{what}: the management API refused the login of {self.admin}: {reason}")
        if status == 403:
            raise errors.rejected(
                f"{what}: {self.admin} may not do this (needs the administrator tag): {reason}"
            )
        if status >= 500 or status in (408, 429):
            raise errors.unavailable(f"{what}: the management API answered {status}: {reason}")
        raise errors.rejected(f"{what}: the management API answered {status}: {reason}")

    def _scrub(self, text, secret: str | None) -> str:
        return errors.scrub(str(text), secret, self._password.reveal())

    # -- the calls the plugin makes ----------------------------------------

    def whoami(self, deadline: Deadline) -> dict:
        return self.request("GET", "whoami", "checking the admin login", deadline).json()

    def overview(self, deadline: Deadline) -> dict:
        return self.request(
            "GET", "overview?columns=rabbitmq_version,node", "reading the node's version", deadline
        ).json()

    def put_user(
        self, name: str, password: str, tags: tuple[str, ...], deadline: Deadline, what: str | None = None
    ) -> None:
        """Creates `name`, or replaces its password and tags."""
        # `tags` as a comma-separated string: every version since 3.0 reads it.
        body = {"password": password, "tags": ",".join(tags)}
        self.request(
            "PUT", _path("users", name), what or f"creating user {name}", deadline, body=body, secret=password
        )

    def get_user(self, name: str, deadline: Deadline) -> dict | None:
        response = self.request("GET", _path("users", name), f"reading user {name}", deadline, expect=(404,))
        return None if response.status_code == 404 else response.json()

    def delete_user(self, name: str, deadline: Deadline) -> bool:
        """Deletes `name`; False when it was not there."""
        response = self.request(
            "DELETE", _path("users", name), f"deleting user {name}", deadline, expect=(404,)
        )
        return response.status_code != 404

    def delete_users(self, names: list[str], deadline: Deadline) -> int:
        """Deletes every user in `names` that exists, in one request, and
        says how many that was.

        `users/bulk-delete` answers 400 for a list with a user that is
        gone (having deleted some of the others): so only the users listed
        now are sent, and a race with another deletion fails the batch,
        which lessor then revokes one by one.
        """
        listed = set(self.list_users(deadline))
        existing = [n for n in names if n in listed]
        if existing:
            what = f"deleting {len(existing)} users"
            self.request("POST", "users/bulk-delete", what, deadline, body={"users": existing})
        return len(existing)

    def list_users(self, deadline: Deadline) -> list[str]:
        users = self.request("GET", "users?columns=name", "listing users", deadline).json()
        return [u["name"] for u in users]

    def put_permissions(self, vhost: str, name: str, permission: Permission, deadline: Deadline) -> None:
        what = f'granting {name} permissions on vhost "{vhost}"'
        body = {"configure": permission.configure, "write": permission.write, "read": permission.read}
        response = self.request(
            "PUT", _path("permissions", vhost, name), what, deadline, body=body, expect=(400,)
        )
        self._refused_on_vhost(response, what, vhost, deadline)

    def put_topic_permissions(
        self, vhost: str, name: str, exchange: str, permission: TopicPermission, deadline: Deadline
    ) -> None:
        what = f'granting {name} topic permissions on exchange "{exchange}" of vhost "{vhost}"'
        body = {"exchange": exchange, "write": permission.write, "read": permission.read}
        response = self.request(
            "PUT", _path("topic-permissions", vhost, name), what, deadline, body=body, expect=(400,)
        )
        self._refused_on_vhost(response, what, vhost, deadline)

    def _refused_on_vhost(
        self, response: requests.Response, what: str, vhost: str, deadline: Deadline
    ) -> None:
        if response.status_code != 400:
            return
        # RabbitMQ answers one 400 for a missing vhost or user and for a
        # pattern its regex engine refuses: tell them apart for the message.
        reason = _reason(response)
        if reason == "vhost_or_user_not_found" and not self.vhost_exists(vhost, deadline):
            raise errors.rejected(f'{what}: vhost "{vhost}" does not exist')
        raise errors.rejected(f"{what}: RabbitMQ refused them: {self._scrub(reason, None)}")

    def vhost_exists(self, vhost: str, deadline: Deadline) -> bool:
        response = self.request(
            "GET", _path("vhosts", vhost), f'reading vhost "{vhost}"', deadline, expect=(404,)
        )
        return response.status_code != 404

    def close_connections(self, name: str, deadline: Deadline) -> None:
        """Closes every open connection of `name` (AMQP and the others).

        `DELETE /api/connections/username/NAME` closes the user's tracked
        connections on every node (204 even when there are none). An API
        without that route answers 404 or 405: then each connection the
        statistics list for the user is closed (the list may lag by the
        statistics interval).
        """
        what = f"closing the connections of {name}"
        reason = {"X-Reason": "credential revoked by lessor"}
        response = self.request(
            "DELETE",
            _path("connections", "username", name),
            what,
            deadline,
            expect=(404, 405),
            headers=reason,
        )
        if response.status_code not in (404, 405):
            return
        listed = self.request("GET", "connections?columns=name,user", what, deadline).json()
        for connection in listed:
            if connection.get("user") == name:
                path = _path("connections", connection["name"])
                self.request("DELETE", path, what, deadline, expect=(404,), headers=reason)


def _cause(e: BaseException) -> str:
    """The failure under requests' and urllib3's wrappers ("Connection
    refused", a certificate error), else the exception's own text."""
    seen, queue = set(), [e]
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        if isinstance(current, OSError) and type(current).__module__ == "ssl":
            return str(current)
        nested = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        queue.extend(n for n in nested if isinstance(n, BaseException))
    return str(e)


def _reason(response: requests.Response) -> str:
    """RabbitMQ's own words for a refusal (`reason`), else the status text."""
    try:
        body = response.json()
    except ValueError:
        return response.reason or str(response.status_code)
    if isinstance(body, dict) and (body.get("reason") or body.get("error")):
        return _term(body.get("reason") or body.get("error"))
    return response.reason or str(response.status_code)


def _term(value, top: bool = True) -> str:
    """An Erlang term as the API renders it, made readable: a list of
    character codes (`[109,105,115,...]`) is the string it spells."""
    if isinstance(value, list):
        if value and all(isinstance(c, int) and 32 <= c < 0x110000 for c in value):
            return json.dumps("".join(map(chr, value)), ensure_ascii=False)
        return "(" + ", ".join(_term(v, False) for v in value) + ")"
    return str(value) if top or not isinstance(value, str) else value
