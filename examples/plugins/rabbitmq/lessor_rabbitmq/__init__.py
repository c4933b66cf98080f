"""lessor's RabbitMQ plugin: users of the management HTTP API, as
external plugin speaking lessor's plugin protocol (gRPC over a Unix socket).

- `config`: a connection's and a role's options, checked into settings.
- `client`: the management API (one session per connection) and the
  per-operation `Deadline`; every HTTP failure classified once.
- `amqp`: a real AMQP login with pika, for TestLogin.
- `engine`: the operations (create, revoke, set a password...) per
  connection, in plain Python.
- `service`: the gRPC service over the engine; failures become data.
- `stubs`: the gRPC stubs compiled from lessor's plugin.proto.
- `server`: start-up, the handshake line, logging, and the ways to end.
- `errors`: the protocol's error kinds and config problems.
"""

__version__ = "0.1.0"
