"""The `lessor.plugin.v1.Plugin` gRPC service over the engine.

Each method reads its request, runs the engine under the call's
`Deadline` and answers. Failures are data (plugin.proto): a `PluginError`
becomes the answer's `error`, an unexpected exception an INTERNAL one, and
the gRPC status stays OK. A method this class lacks answers UNIMPLEMENTED
through the generated base class, which lessor reads as UNSUPPORTED.
"""

from __future__ import annotations

import logging

from . import __version__, errors
from .client import Deadline
from .config import parse_connection, parse_role
from .engine import Engine

log = logging.getLogger("lessor_rabbitmq")

PROTOCOL = 1
# RabbitMQ takes longer names; lessor's usernames are far shorter.
MAX_USERNAME_LEN = 100
STATIC_STRATEGIES = ("single", "alternating")


def build(pb2, pb2_grpc, engine: Engine):
    """A servicer for `pb2_grpc.add_PluginServicer_to_server`."""
    cls = type("PluginService", (Service, pb2_grpc.PluginServicer), {})
    return cls(pb2, engine)


class Service:
    def __init__(self, pb2, engine: Engine) -> None:
        self.pb2 = pb2
        self.engine = engine

    # -- plumbing -------------------------------------------------------------

    def _error(self, e: errors.PluginError):
        return self.pb2.Error(kind=self.pb2.Error.Kind.Value(e.kind), message=e.message)

    def _run(self, rpc: str, connection: str, answer, work):
        """`work()`'s answer, or `answer(error=...)` when it fails."""
        log.debug("%s on connection %s", rpc, connection or "-")
        try:
            return work()
        except errors.PluginError as e:
            level = logging.DEBUG if e.kind == errors.UNSUPPORTED else logging.WARNING
            log.log(level, "%s on connection %s failed (%s): %s", rpc, connection or "-", e.kind, e.message)
            return answer(error=self._error(e))
        except Exception as e:  # a bug: say what, not where the secrets are
            log.error("%s on connection %s failed: %s: %s", rpc, connection or "-", type(e).__name__, e)
            return answer(error=self._error(errors.internal(f"{rpc}: {type(e).__name__}")))

    def _deadline(self, connection: str, context) -> Deadline:
        settings = self.engine.connection(connection).settings
        return Deadline.start(settings.operation_timeout, context.time_remaining())

    def _outcome(self, rpc: str, connection: str, work):
        def run():
            work()
            return self.pb2.Outcome()

        return self._run(rpc, connection, self.pb2.Outcome, run)

    def _role(self, role):
        settings, problems = parse_role(role.name, role.options_json)
        if problems:
            raise errors.invalid_role("; ".join(f"{p.key}: {p.message}" for p in problems))
        return settings

    def _config_errors(self, problems):
        for p in problems:
            log.warning("config: %s: %s", p.key, p.message)
        return [self.pb2.ConfigError(key=p.key, message=p.message) for p in problems]

    # -- the protocol ---------------------------------------------------------

    def Describe(self, request, context):
        return self.pb2.DescribeResponse(name="rabbitmq", version=__version__, protocol=PROTOCOL)

    def Configure(self, request, context):
        def run():
            settings, problems = parse_connection(
                request.connection,
                request.url if request.HasField("url") else None,
                request.password if request.HasField("password") else None,
                request.admin_username if request.HasField("admin_username") else None,
                request.max_connections,
                request.operation_timeout_ms,
                request.options_json,
            )
            if problems:
                return self.pb2.ConfigureResponse(config_errors=self._config_errors(problems))
            self.engine.configure(settings)
            return self.pb2.ConfigureResponse(
                capabilities=self.pb2.Capabilities(
                    # Renew is a no-op: a RabbitMQ user has no expiry.
                    renewable=True,
                    revocable=True,
                    max_username_len=MAX_USERNAME_LEN,
                ),
                static_strategies=STATIC_STRATEGIES,
                revokes_in_batches=True,
                admin_username=settings.username,
            )

        return self._run("Configure", request.connection, self.pb2.ConfigureResponse, run)

    def CheckRole(self, request, context):
        def run():
            _, problems = parse_role(request.role.name, request.role.options_json)
            return self.pb2.CheckRoleResponse(config_errors=self._config_errors(problems))

        return self._run("CheckRole", request.connection, self.pb2.CheckRoleResponse, run)

    def CheckTtls(self, request, context):
        # Users live until deleted: any TTL is lessor's alone to keep.
        return self.pb2.Outcome()

    def Verify(self, request, context):
        c = request.connection
        return self._outcome("Verify", c, lambda: self.engine.verify(c, self._deadline(c, context)))

    def Create(self, request, context):
        c = request.connection

        def run():
            role = self._role(request.role)
            self.engine.create(c, role, request.username, request.password, self._deadline(c, context))
            credential = self.pb2.DatabaseCredential(username=request.username, password=request.password)
            return self.pb2.CreateResponse(credential=self.pb2.Credential(database=credential))

        return self._run("Create", c, self.pb2.CreateResponse, run)

    def Renew(self, request, context):
        return self.pb2.Outcome()

    def Revoke(self, request, context):
        c = request.connection
        user = request.lease.username
        return self._outcome("Revoke", c, lambda: self.engine.revoke(c, user, self._deadline(c, context)))

    def RevokeBatch(self, request, context):
        c = request.connection
        users = [lease.username for lease in request.leases]
        return self._outcome(
            "RevokeBatch", c, lambda: self.engine.revoke_batch(c, users, self._deadline(c, context))
        )

    def ListUsers(self, request, context):
        c = request.connection

        def run():
            names = self.engine.list_users(c, request.prefix, self._deadline(c, context))
            return self.pb2.ListUsersResponse(users=[self.pb2.BackendUser(name=n) for n in names])

        return self._run("ListUsers", c, self.pb2.ListUsersResponse, run)

    def SetPassword(self, request, context):
        c = request.connection
        return self._outcome(
            "SetPassword",
            c,
            lambda: self.engine.set_password(
                c, request.username, request.password, self._deadline(c, context)
            ),
        )

    def TestLogin(self, request, context):
        c = request.connection
        return self._outcome(
            "TestLogin",
            c,
            lambda: self.engine.test_login(c, request.username, request.password, self._deadline(c, context)),
        )

    def EndSessions(self, request, context):
        c = request.connection
        return self._outcome(
            "EndSessions",
            c,
            lambda: self.engine.end_sessions(c, request.username, self._deadline(c, context)),
        )

    # -- what RabbitMQ users do not have ---------------------------------------

    def _unsupported(self, rpc, request, answer):
        def run():
            raise errors.unsupported(rpc)

        return self._run(rpc, request.connection, answer, run)

    def AddPassword(self, request, context):
        return self._unsupported("AddPassword", request, self.pb2.Outcome)

    def RemovePassword(self, request, context):
        return self._unsupported("RemovePassword", request, self.pb2.Outcome)

    def CreateKey(self, request, context):
        return self._unsupported("CreateKey", request, self.pb2.CreateKeyResponse)

    def TestKey(self, request, context):
        return self._unsupported("TestKey", request, self.pb2.Outcome)

    def DeleteKey(self, request, context):
        return self._unsupported("DeleteKey", request, self.pb2.Outcome)

    def RevokeSessions(self, request, context):
        return self._unsupported("RevokeSessions", request, self.pb2.RevokeSessionsResponse)
