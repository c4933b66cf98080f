"""The gRPC stubs, compiled from lessor's plugin.proto, never committed.

The proto is found through `LESSOR_PLUGIN_PROTO` (a path to plugin.proto),
else where the repository keeps it relative to this plugin
(`schemas/proto/lessor/plugin/v1/plugin.proto`, three folders up). The
stubs are compiled with `python -m grpc_tools.protoc` into
`generated/<hash of the proto>/` next to the plugin (git-ignored), or into
`$XDG_CACHE_HOME/lessor-rabbitmq/` when that folder is not writable: a
changed proto gets stubs of its own, and stubs never outlive their proto.
scripts/test compiles them once (`lessor-rabbitmq --generate-stubs`); a
plugin that finds none compiles them at its first start.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent.parent
PROTO_NAME = "lessor/plugin/v1/plugin.proto"


def proto_path() -> Path:
    configured = os.environ.get("LESSOR_PLUGIN_PROTO")
    path = Path(configured) if configured else PLUGIN_DIR.parents[2] / "schemas" / "proto" / PROTO_NAME
    if not path.is_file():
        raise RuntimeError(
            f"plugin.proto not found at {path}: set LESSOR_PLUGIN_PROTO to lessor's "
            f"schemas/proto/{PROTO_NAME}"
        )
    return path


def _cache_roots() -> list[Path]:
    roots = [PLUGIN_DIR / "generated"]
    cache = os.environ.get("XDG_CACHE_HOME") or (
        os.environ.get("HOME") and os.path.join(os.environ["HOME"], ".cache")
    )
    if cache:
        roots.append(Path(cache) / "lessor-rabbitmq")
    return roots


def ensure() -> Path:
    """The folder holding current stubs, compiling them when missing."""
    proto = proto_path()
    digest = hashlib.sha256(proto.read_bytes()).hexdigest()[:16]
    for root in _cache_roots():
        if (root / digest / "lessor" / "plugin" / "v1" / "plugin_pb2_grpc.py").is_file():
            return root / digest
    failures = []
    for root in _cache_roots():
        try:
            return _compile(proto, root, digest)
        except OSError as e:
            failures.append(f"{root}: {e}")
    raise RuntimeError("cannot write the gRPC stubs anywhere: " + "; ".join(failures))


def _compile(proto: Path, root: Path, digest: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".compiling-", dir=root))
    try:
        # The proto at its package path, so the generated *_grpc module
        # imports `lessor.plugin.v1.plugin_pb2`, whatever the file's folder.
        source = work / "proto" / PROTO_NAME
        source.parent.mkdir(parents=True)
        shutil.copyfile(proto, source)
        out = work / "out"
        out.mkdir()
        compiled = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{work / 'proto'}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                PROTO_NAME,
            ],
            capture_output=True,
            text=True,
        )
        if compiled.returncode != 0:
            raise RuntimeError(
                f"grpc_tools.protoc failed: {compiled.stderr.strip() or compiled.stdout.strip()}"
            )
        final = root / digest
        try:
            out.rename(final)
        except OSError:
            if not (final / "lessor" / "plugin" / "v1" / "plugin_pb2_grpc.py").is_file():
                raise
            # Another process compiled the same proto first: use its stubs.
        for old in root.iterdir():
            if old.name != digest and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load():
    """(plugin_pb2, plugin_pb2_grpc), compiled first if need be."""
    folder = ensure()
    sys.path.insert(0, str(folder))
    pb2 = importlib.import_module("lessor.plugin.v1.plugin_pb2")
    grpc_module = importlib.import_module("lessor.plugin.v1.plugin_pb2_grpc")
    return pb2, grpc_module
