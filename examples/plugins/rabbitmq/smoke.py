#!/usr/bin/env python3
"""A smoke test of lessor-rabbitmq against a real RabbitMQ, without lessor.

Starts the plugin as lessor does (LESSOR_PLUGIN_SOCKET in a fresh 0700
folder, stdin a pipe, the handshake line read from stdout), speaks the
protocol over the socket with grpcio, and checks every step in RabbitMQ
itself: the management API's view of the user and a real AMQP login with
pika. Ends by closing the plugin's stdin (it must exit) and by SIGTERM on
a second one.

Reads the node scripts/test starts (`eval "$(scripts/test --env)"`):
LESSOR_TEST_RABBITMQ_API, _AMQP, _ADMIN and _PASSWORD_FILE. Run it with
the venv's python:

    /var/tmp/lessor-venv/bin/python examples/plugins/rabbitmq/smoke.py [-v]

(`-v` prints the plugin's log, as lessor would relay it.)
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pika
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lessor_rabbitmq import stubs  # noqa: E402

pb2, pb2_grpc = stubs.load()

API = os.environ.get("LESSOR_TEST_RABBITMQ_API", "http://127.0.0.1:55674")
AMQP = os.environ.get("LESSOR_TEST_RABBITMQ_AMQP", "127.0.0.1:55673")
ADMIN = os.environ.get("LESSOR_TEST_RABBITMQ_ADMIN", "lessor_admin")
PASSWORD = (
    Path(os.environ.get("LESSOR_TEST_RABBITMQ_PASSWORD_FILE", "/var/tmp/lessor-rabbitmq.pw"))
    .read_text()
    .strip()
)
PLUGIN = os.environ.get("LESSOR_TEST_RABBITMQ_PLUGIN", str(HERE / "lessor-rabbitmq"))
CONNECTION = "rmq"
ROLE = pb2.Role(
    name="amqp_app",
    options_json='{"vhosts": {"/": {"configure": "^lessor-test-.*", "write": ".*", "read": ".*"}},'
    ' "vhost_topics": {"/": {"amq.topic": {"write": "^app\\\\.", "read": ".*"}}}, "tags": ["monitoring"]}',
)

admin = requests.Session()
admin.auth = (ADMIN, PASSWORD)
failures: list[str] = []


def check(what: str, condition: bool, detail: object = "") -> None:
    print(
        f"{'ok  ' if condition else 'FAIL'} {what}"
        + (f": {detail}" if not condition and detail != "" else "")
    )
    if not condition:
        failures.append(what)


def amqp_login(user: str, password: str):
    """A pika connection, or the exception the login raised."""
    host, port = AMQP.rsplit(":", 1)
    parameters = pika.ConnectionParameters(
        host=host,
        port=int(port),
        credentials=pika.PlainCredentials(user, password),
        connection_attempts=1,
        socket_timeout=5,
        stack_timeout=5,
        blocked_connection_timeout=5,
    )
    try:
        return pika.BlockingConnection(parameters)
    except pika.exceptions.AMQPError as e:
        return e


def error_of(answer) -> str:
    """`KIND: message`, or "" when the answer has no error."""
    if not answer.HasField("error"):
        return ""
    return f"{pb2.Error.Kind.Name(answer.error.kind)}: {answer.error.message}"


class Plugin:
    """The plugin as lessor runs it."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="lessor-plugin-")
        os.chmod(self.dir, 0o700)
        self.socket = os.path.join(self.dir, "plugin.sock")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        venv_bin = os.path.dirname(sys.executable)
        self.process = subprocess.Popen(
            [PLUGIN],
            env={"PATH": f"{venv_bin}:/usr/bin:/bin", "LESSOR_PLUGIN_SOCKET": self.socket},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.stderr_path, "wb"),
        )
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        self.handshake = self.process.stdout.readline().decode() if ready else ""
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        self.stub = pb2_grpc.PluginStub(self.channel)

    def call(self, rpc: str, request, timeout: float = 15):
        return getattr(self.stub, rpc)(request, timeout=timeout)

    def stderr(self) -> str:
        return Path(self.stderr_path).read_text()


def configure(plugin: Plugin, name=CONNECTION, url=API, options=None, timeout_ms=10_000):
    options = options if options is not None else f'{{"username": "{ADMIN}", "amqp_url": "{AMQP}"}}'
    return plugin.call(
        "Configure",
        pb2.ConfigureRequest(
            connection=name,
            url=url,
            password=PASSWORD,
            max_connections=4,
            operation_timeout_ms=timeout_ms,
            options_json=options,
        ),
    )


def main() -> int:
    plugin = Plugin()
    check("handshake line", plugin.handshake == "lessor-plugin 1 grpc\n", repr(plugin.handshake))
    check("socket in a 0700 folder", os.stat(plugin.dir).st_mode & 0o777 == 0o700)

    described = plugin.call("Describe", pb2.DescribeRequest())
    check("Describe", (described.name, described.protocol) == ("rabbitmq", 1), described)

    missing = configure(plugin, options='{"amqp_url": "127.0.0.1:1", "color": "blue"}')
    keys = sorted(e.key for e in missing.config_errors)
    check(
        "Configure without username names the keys",
        keys == ["connections.rmq.color", "connections.rmq.username"],
        keys,
    )

    for attempt in ("Configure", "Configure again (idempotent)"):
        configured = configure(plugin)
        check(
            attempt,
            not configured.config_errors
            and not configured.HasField("error")
            and configured.capabilities.renewable
            and configured.capabilities.revocable
            and configured.capabilities.max_username_len == 100
            and list(configured.static_strategies) == ["single", "alternating"]
            and configured.admin_username == ADMIN,
            configured,
        )
    check("Verify", error_of(plugin.call("Verify", pb2.ConnectionRequest(connection=CONNECTION))) == "")

    good = plugin.call("CheckRole", pb2.CheckRoleRequest(connection=CONNECTION, role=ROLE))
    check("CheckRole accepts a good role", not good.config_errors, good)
    bad = plugin.call(
        "CheckRole",
        pb2.CheckRoleRequest(
            connection=CONNECTION,
            role=pb2.Role(
                name="amqp_app",
                options_json='{"vhosts": {"/": {"write": "(", "create": ".*"}},'
                ' "tags": ["a,b", 3], "color": "red"}',
            ),
        ),
    )
    got = {e.key: e.message for e in bad.config_errors}
    check(
        "CheckRole names each bad key",
        sorted(got)
        == [
            "roles.amqp_app.color",
            "roles.amqp_app.tags[0]",
            "roles.amqp_app.tags[1]",
            "roles.amqp_app.vhosts./.create",
            "roles.amqp_app.vhosts./.write",
        ]
        and got["roles.amqp_app.vhosts./.write"].startswith("not a valid regular expression")
        and got["roles.amqp_app.color"].startswith("unknown key"),
        got,
    )
    empty = plugin.call(
        "CheckRole", pb2.CheckRoleRequest(connection=CONNECTION, role=pb2.Role(name="r", options_json="{}"))
    )
    check("CheckRole requires vhosts", [e.key for e in empty.config_errors] == ["roles.r.vhosts"], empty)

    # Create: the user exists with its tags and permissions, and logs in.
    user = f"v_amqp_app_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24)
    created = plugin.call(
        "Create",
        pb2.CreateRequest(connection=CONNECTION, role=ROLE, lease_id="l1", username=user, password=password),
    )
    check(
        "Create",
        error_of(created) == ""
        and created.credential.database.username == user
        and created.credential.database.password == password,
        error_of(created),
    )
    shown = admin.get(f"{API}/api/users/{user}").json()
    check(
        "the user has the role's tags", shown.get("tags") in (["monitoring"], "monitoring"), shown.get("tags")
    )
    permissions = admin.get(f"{API}/api/users/{user}/permissions").json()
    check(
        "the user has the role's permissions",
        [(p["vhost"], p["configure"], p["write"], p["read"]) for p in permissions]
        == [("/", "^lessor-test-.*", ".*", ".*")],
        permissions,
    )
    topics = admin.get(f"{API}/api/users/{user}/topic-permissions").json()
    check(
        "the user has the role's topic permissions",
        [(t["vhost"], t["exchange"], t["write"], t["read"]) for t in topics]
        == [("/", "amq.topic", "^app\\.", ".*")],
        topics,
    )
    session = amqp_login(user, password)
    check("AMQP login as the new user", isinstance(session, pika.BlockingConnection), session)
    channel = session.channel() if isinstance(session, pika.BlockingConnection) else None
    if channel is not None:
        channel.queue_declare("lessor-test-smoke", exclusive=True)
        check("it may declare a queue its configure pattern allows", True)
    login = plugin.call(
        "TestLogin", pb2.PasswordRequest(connection=CONNECTION, username=user, password=password)
    )
    check("TestLogin with the password", error_of(login) == "", error_of(login))
    wrong = plugin.call(
        "TestLogin", pb2.PasswordRequest(connection=CONNECTION, username=user, password="wrong-password")
    )
    check(
        "TestLogin with another password is refused",
        error_of(wrong).startswith("REJECTED") and "login refused" in error_of(wrong),
        error_of(wrong),
    )
    listed = plugin.call("ListUsers", pb2.ListUsersRequest(connection=CONNECTION, prefix="v_amqp_app_"))
    check("ListUsers lists it", user in [u.name for u in listed.users], listed)

    # A vhost that does not exist: refused, naming it, and no user left.
    ghost_role = pb2.Role(name="ghost", options_json='{"vhosts": {"no-such-vhost": {"read": ".*"}}}')
    ghost = f"v_ghost_{secrets.token_hex(4)}"
    refused = plugin.call(
        "Create",
        pb2.CreateRequest(
            connection=CONNECTION, role=ghost_role, lease_id="l2", username=ghost, password=password
        ),
    )
    check(
        "Create on a missing vhost is REJECTED naming it",
        error_of(refused).startswith("REJECTED")
        and 'vhost "no-such-vhost" does not exist' in error_of(refused),
        error_of(refused),
    )
    check("... and leaves no user", admin.get(f"{API}/api/users/{ghost}").status_code == 404)
    check("... and no password in the message", password not in error_of(refused))

    # Revoke: gone, its open connection closed, its login refused.
    lease = pb2.Lease(lease_id="l1", role_name="amqp_app", role=ROLE, username=user)
    revoked = plugin.call("Revoke", pb2.RevokeRequest(connection=CONNECTION, lease=lease))
    check("Revoke", error_of(revoked) == "", error_of(revoked))
    check("the user is gone", admin.get(f"{API}/api/users/{user}").status_code == 404)
    if isinstance(session, pika.BlockingConnection):
        try:
            deadline = time.monotonic() + 10
            while session.is_open and time.monotonic() < deadline:
                session.process_data_events(time_limit=0.2)
            closed = not session.is_open
        except pika.exceptions.AMQPError:
            closed = True
        check("its open AMQP connection was closed", closed)
    after = amqp_login(user, password)
    check("AMQP login is refused", isinstance(after, pika.exceptions.ProbableAuthenticationError), after)
    again = plugin.call("Revoke", pb2.RevokeRequest(connection=CONNECTION, lease=lease))
    check("Revoke again (already gone) succeeds", error_of(again) == "", error_of(again))
    listed = plugin.call("ListUsers", pb2.ListUsersRequest(connection=CONNECTION, prefix="v_amqp_app_"))
    check("ListUsers no longer lists it", user not in [u.name for u in listed.users], listed)

    # Batches: two users and one already gone.
    batch = [f"v_batch_{secrets.token_hex(4)}" for _ in range(2)]
    for name in batch:
        plugin.call(
            "Create", pb2.CreateRequest(connection=CONNECTION, role=ROLE, username=name, password=password)
        )
    leases = [pb2.Lease(username=name) for name in batch + ["v_batch_gone"]]
    revoked = plugin.call("RevokeBatch", pb2.RevokeBatchRequest(connection=CONNECTION, leases=leases))
    check(
        "RevokeBatch",
        error_of(revoked) == "" and all(admin.get(f"{API}/api/users/{n}").status_code == 404 for n in batch),
        error_of(revoked),
    )

    # Static accounts: a new password keeps the tags; the old one stops working.
    static = f"svc_static_{secrets.token_hex(4)}"
    admin.put(f"{API}/api/users/{static}", json={"password": "initial-password", "tags": "management"})
    admin.put(f"{API}/api/permissions/%2F/{static}", json={"configure": "", "write": "", "read": ".*"})
    rotated = secrets.token_urlsafe(24)
    changed = plugin.call(
        "SetPassword", pb2.PasswordRequest(connection=CONNECTION, username=static, password=rotated)
    )
    check("SetPassword", error_of(changed) == "", error_of(changed))
    login = plugin.call(
        "TestLogin", pb2.PasswordRequest(connection=CONNECTION, username=static, password=rotated)
    )
    check("TestLogin with the new password", error_of(login) == "", error_of(login))
    check(
        "the old password is refused",
        isinstance(amqp_login(static, "initial-password"), pika.exceptions.ProbableAuthenticationError),
    )
    check(
        "its tags were kept",
        admin.get(f"{API}/api/users/{static}").json().get("tags") in (["management"], "management"),
    )
    ended = plugin.call("EndSessions", pb2.UserRequest(connection=CONNECTION, username=static))
    check("EndSessions", error_of(ended) == "", error_of(ended))
    missing = plugin.call(
        "SetPassword", pb2.PasswordRequest(connection=CONNECTION, username="no_such_user", password=rotated)
    )
    check(
        "SetPassword on a missing user is REJECTED",
        error_of(missing).startswith("REJECTED"),
        error_of(missing),
    )
    admin.delete(f"{API}/api/users/{static}")

    # rotate-root: lessor sets the admin's new password, then configures the
    # connection again with it (and the admin it switched to, if any).
    root = f"lessor_root_{secrets.token_hex(4)}"
    first = secrets.token_urlsafe(24)
    admin.put(f"{API}/api/users/{root}", json={"password": first, "tags": "administrator"})
    answer = plugin.call(
        "Configure",
        pb2.ConfigureRequest(
            connection="rot",
            url=API,
            password=first,
            admin_username=root,
            max_connections=2,
            operation_timeout_ms=10_000,
            options_json=f'{{"username": "{ADMIN}", "amqp_url": "{AMQP}"}}',
        ),
    )
    check("Configure with admin_username logs in as it", answer.admin_username == root, answer)
    second = secrets.token_urlsafe(24)
    rotated_root = plugin.call(
        "SetPassword", pb2.PasswordRequest(connection="rot", username=root, password=second)
    )
    check("SetPassword on the admin itself", error_of(rotated_root) == "", error_of(rotated_root))
    stale = plugin.call("Verify", pb2.ConnectionRequest(connection="rot"))
    check("the old admin password no longer works", error_of(stale).startswith("REJECTED"), error_of(stale))
    answer = plugin.call(
        "Configure",
        pb2.ConfigureRequest(
            connection="rot",
            url=API,
            password=second,
            admin_username=root,
            max_connections=2,
            operation_timeout_ms=10_000,
            options_json=f'{{"username": "{ADMIN}"}}',
        ),
    )
    verified = plugin.call("Verify", pb2.ConnectionRequest(connection="rot"))
    check("Configure with the rotated password works", error_of(verified) == "", error_of(verified))
    admin.delete(f"{API}/api/users/{root}")

    unsupported = plugin.call(
        "AddPassword", pb2.PasswordRequest(connection=CONNECTION, username=static, password=rotated)
    )
    check(
        "AddPassword is UNSUPPORTED", error_of(unsupported).startswith("UNSUPPORTED"), error_of(unsupported)
    )
    renewed = plugin.call("Renew", pb2.RenewRequest(connection=CONNECTION, lease=lease))
    check("Renew is a no-op that succeeds", error_of(renewed) == "")

    # Outages: a closed port is UNAVAILABLE at once; a server that never
    # answers is UNAVAILABLE within operation_timeout.
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{closed_port.getsockname()[1]}"
    closed_port.close()
    configure(plugin, name="dead", url=dead)
    answer = plugin.call(
        "Create", pb2.CreateRequest(connection="dead", role=ROLE, username="v_x", password=password)
    )
    check("an unreachable API is UNAVAILABLE", error_of(answer).startswith("UNAVAILABLE"), error_of(answer))
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)  # accepted by the kernel, never answered
    configure(plugin, name="hole", url=f"http://127.0.0.1:{hole.getsockname()[1]}", timeout_ms=700)
    started = time.monotonic()
    answer = plugin.call(
        "Create", pb2.CreateRequest(connection="hole", role=ROLE, username="v_x", password=password)
    )
    took = time.monotonic() - started
    check(
        "a silent API is UNAVAILABLE within operation_timeout",
        error_of(answer).startswith("UNAVAILABLE") and took < 1.5,
        f"{error_of(answer)} after {took:.2f}s",
    )
    # A gRPC deadline shorter than operation_timeout: the plugin gives up
    # by it too (lessor has hung up by then; the plugin's log tells).
    configure(plugin, name="hole_long", url=f"http://127.0.0.1:{hole.getsockname()[1]}", timeout_ms=60_000)
    started = time.monotonic()
    try:
        plugin.call(
            "Create",
            pb2.CreateRequest(connection="hole_long", role=ROLE, username="v_y", password=password),
            timeout=0.8,
        )
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code = e.code()
    gave_up = "Create on connection hole_long failed (UNAVAILABLE)"
    while gave_up not in plugin.stderr() and time.monotonic() - started < 5:
        time.sleep(0.05)
    took = time.monotonic() - started
    check(
        "a gRPC deadline shorter than operation_timeout bounds the work",
        code == grpc.StatusCode.DEADLINE_EXCEEDED and gave_up in plugin.stderr() and took < 2,
        f"{code} after {took:.2f}s",
    )
    hole.close()

    # The log: one line per event, each with a level; no password.
    log = plugin.stderr()
    check(
        "every log line starts with a level",
        all(line.split(" ", 1)[0] in ("INFO", "WARN", "ERROR", "DEBUG") for line in log.splitlines()),
        [
            line
            for line in log.splitlines()
            if line.split(" ", 1)[0] not in ("INFO", "WARN", "ERROR", "DEBUG")
        ][:3],
    )
    check("no password in the log", not any(s in log for s in (password, rotated, first, second, PASSWORD)))

    # stdin closed: the plugin exits, and removes its socket.
    plugin.channel.close()
    plugin.process.stdin.close()
    try:
        code = plugin.process.wait(15)
    except subprocess.TimeoutExpired:
        plugin.process.kill()
        code = None
    check("the plugin exits when its stdin closes", code == 0, code)
    check("... and removes its socket", not os.path.exists(plugin.socket))

    other = Plugin()
    other.process.send_signal(signal.SIGTERM)
    try:
        code = other.process.wait(15)
    except subprocess.TimeoutExpired:
        other.process.kill()
        code = None
    check("the plugin exits on SIGTERM", code == 0, code)

    print(f"\n{len(failures)} failed" if failures else "\nall passed")
    if failures or "-v" in sys.argv[1:]:
        print("\nthe plugin's log:\n" + plugin.stderr() + other.stderr(), file=sys.stderr)
    for run in (plugin, other):
        shutil.rmtree(run.dir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
