"""The process: logging, the gRPC server, the handshake, the ways to end.

lessor starts the plugin with `LESSOR_PLUGIN_SOCKET` naming a Unix socket
path in a private folder. The plugin serves gRPC there, then prints the
handshake line `lessor-plugin 1 grpc` on stdout; after it, stdout is
pointed at stderr, so a stray print lands in lessor's log instead of a
pipe nobody reads. It ends when its stdin reaches EOF (lessor holds the
other end of that pipe, so the plugin dies with lessor, even by SIGKILL)
or on SIGTERM, letting calls in flight finish for a few seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import sys
import threading
from concurrent import futures

HANDSHAKE = "lessor-plugin 1 grpc"
# Calls served at once; lessor bounds its own by max_connections.
WORKERS = 16
GRACE_SECONDS = 5.0

log = logging.getLogger("lessor_rabbitmq")


class _OneLine(logging.Formatter):
    """`LEVEL message` on one line: lessor reads the level off the front."""

    LEVELS = {"WARNING": "WARN", "CRITICAL": "ERROR"}

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += " (" + self.formatException(record.exc_info) + ")"
        level = self.LEVELS.get(record.levelname, record.levelname)
        return f"{level} " + " | ".join(line for line in text.splitlines() if line.strip())


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = os.environ.get("LESSOR_RABBITMQ_LOG", "INFO").upper()
    root.setLevel(getattr(logging, level, logging.INFO))
    # urllib3 logs each request line at DEBUG, and pika every step of a
    # refused login up to ERROR: the plugin reports each failure itself,
    # once, with what it was doing.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL + 1)
    logging.captureWarnings(True)


def _watch_stdin(stop: threading.Event) -> None:
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    log.info("stdin closed; stopping")
    stop.set()


def serve() -> int:
    setup_logging()
    socket_path = os.environ.get("LESSOR_PLUGIN_SOCKET")
    if not socket_path:
        log.error("LESSOR_PLUGIN_SOCKET is not set: this program is started by lessor, not by hand")
        return 2

    # The libraries after logging, so that a missing one is a logged line.
    try:
        import grpc

        from . import __version__, service, stubs
        from .engine import Engine
    except ImportError as e:
        log.error("%s, for %s: install requirements.txt into the python PATH finds first", e, sys.executable)
        return 1

    try:
        pb2, pb2_grpc = stubs.load()
    except Exception as e:
        log.error("no gRPC stubs: %s", e)
        return 1

    engine = Engine()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="rpc"))
    pb2_grpc.add_PluginServicer_to_server(service.build(pb2, pb2_grpc, engine), server)
    try:
        bound = server.add_insecure_port(f"unix:{socket_path}")
    except RuntimeError as e:
        bound = 0
        log.error("cannot listen on %s: %s", socket_path, e)
    if not bound:
        log.error("cannot listen on %s", socket_path)
        return 1
    stop = threading.Event()

    def on_signal(number, _frame):
        log.info("%s; stopping", signal.Signals(number).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()

    log.info("rabbitmq plugin %s serving on %s (pid %d)", __version__, socket_path, os.getpid())
    sys.stdout.write(HANDSHAKE + "\n")
    sys.stdout.flush()
    os.dup2(2, 1)

    threading.Thread(target=_watch_stdin, args=(stop,), name="stdin", daemon=True).start()
    # A wait with a timeout, so the main thread stays able to run the
    # signal handler.
    while not stop.wait(1.0):
        pass
    server.stop(GRACE_SECONDS).wait()
    engine.close()
    try:
        if stat.S_ISSOCK(os.lstat(socket_path).st_mode):
            os.unlink(socket_path)
    except OSError:
        pass
    log.info("stopped")
    return 0


def generate_stubs() -> int:
    """`--generate-stubs`: compile them now and say where they are."""
    setup_logging()
    from . import stubs

    try:
        print(stubs.ensure())
    except Exception as e:
        log.error("%s", e)
        return 1
    return 0
