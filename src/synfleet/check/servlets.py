"""List the endpoints each Synapse process of a deployment registers, with Synapse's own classes.

Run as ``python -m synfleet.check.servlets [--with=EXTRA_YAML ...] HOMESERVER_YAML [WORKER_YAML
...]`` (``--with``: settings every process loads after its own files, such as experimental
features whose routes are to be proven); prints one JSON object per process (main first)::

    {"process": "rooms1", "ok": true, "error": "",
     "resources": [{"prefix": "/_matrix/client", "routes": [["GET", "^/_matrix/..."], ...]},
                   {"prefix": "/.well-known/matrix/client", "routes": null}, ...]}

Each process is built as it starts: its configuration loaded from the same files, its
HomeServer class (main's or the generic worker's), and the resources of every HTTP listener that
serves requests (client, federation, media, keys, openid; not replication or metrics) built by
Synapse's own listener code, with listening itself left out. A resource that routes by regex
(``JsonResource``) gives its ``(method, regex)`` routes; any other gives its path (``routes``
null), or the paths of its children.

Synapse's stores need a database to be built, never to register servlets: each run points every
process at one throwaway SQLite file in a temp dir, prepared by main's setup first (workers only
check its schema). Synapse keeps global state per process (metrics, the media servlet group), so
each process is built in a forked child of this one, which imports Synapse once.

Workers whose files differ only in their name and sockets, and whose name the shared file gives
the same duties, register the same endpoints: they are built once.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from synfleet.model.synapse import Resource

#: Listener resources whose endpoints nginx routes to (the others are internal).
INBOUND_RESOURCES = frozenset({Resource.CLIENT, Resource.FEDERATION, Resource.MEDIA, Resource.KEYS, "openid"})

#: Per-process settings of a worker's file that do not change what it registers.
_NAME_KEYS = frozenset({"worker_name", "worker_log_config", "worker_pid_file"})


def _mentions(value: Any, name: str, where: str = "") -> Iterator[str]:
    """The key paths of the shared file whose value is, or lists, ``name`` (its duties)."""
    if value == name:
        yield where
    elif isinstance(value, dict):
        for key, inner in value.items():
            if key == name:
                yield f"{where}.{key}="
            yield from _mentions(inner, name, f"{where}.{key}")
    elif isinstance(value, list):
        for inner in value:
            yield from _mentions(inner, name, where)


def signature(shared: dict[str, Any], worker: dict[str, Any]) -> str:
    """What decides a worker's endpoints: its file without name and sockets, and its duties."""
    name = str(worker.get("worker_name", ""))
    own = {key: value for key, value in worker.items() if key not in _NAME_KEYS}
    listeners = [
        {key: value for key, value in listener.items() if key not in {"path", "port", "bind_addresses"}}
        for listener in own.pop("worker_listeners", []) or []
    ]
    return json.dumps([own, listeners, sorted(set(_mentions(shared, name)))], sort_keys=True, default=str)


def _resource_entries(prefix: str, resource: Any) -> Iterator[dict[str, Any]]:
    from synapse.http.server import JsonResource

    inner = getattr(resource, "_wrappedResource", resource)  # compression wrappers
    if isinstance(inner, JsonResource):
        routes = [
            [method.decode(), pattern.pattern] for pattern, methods in inner._routes.items() for method in methods
        ]
        yield {"prefix": prefix, "routes": routes}
        return
    children = getattr(inner, "children", {}) or {}
    if not children:
        yield {"prefix": prefix, "routes": None}
    for child, below in children.items():
        yield from _resource_entries(f"{prefix}/{child.decode()}", below)


def build(paths: list[str]) -> list[dict[str, Any]]:
    """The resources of every inbound HTTP listener of the process configured by ``paths``."""
    from unittest import mock

    import synapse.app._base as app_base
    import synapse.app.generic_worker as worker_app
    import synapse.app.homeserver as main_app
    from synapse.config.homeserver import HomeServerConfig

    argv = [arg for path in paths for arg in ("--config-path", path)]
    config = HomeServerConfig.load_config("synfleet check", argv)
    is_worker = bool(config.worker.worker_app)
    server: worker_app.GenericWorkerServer | main_app.SynapseHomeServer
    if is_worker:
        server = worker_app.GenericWorkerServer(config.server.server_name, config=config)
    else:
        server = main_app.SynapseHomeServer(config.server.server_name, config=config)
    server.setup()
    trees: list[dict[str, Any]] = []

    def capture(resources: dict[str, Any], root: Any) -> Any:
        trees.append(dict(resources))
        return root

    listeners = config.worker.worker_listeners if is_worker else config.server.listeners
    with (
        mock.patch.object(main_app, "create_resource_tree", capture),
        mock.patch.object(worker_app, "create_resource_tree", capture),
        mock.patch.object(main_app, "listen_http", lambda *args, **kwargs: []),
        mock.patch.object(app_base, "listen_http", lambda *args, **kwargs: []),
    ):
        for listener in listeners:
            names = {
                name for res in (listener.http_options.resources if listener.http_options else []) for name in res.names
            }
            if listener.type != "http" or not names & INBOUND_RESOURCES:
                continue
            if isinstance(server, worker_app.GenericWorkerServer):
                server._listen_http(listener)
            else:
                server._listener_http(config, listener)
    return [
        entry
        for tree in trees
        for prefix, resource in sorted(tree.items())
        for entry in _resource_entries(prefix, resource)
    ]


def _in_child(paths: list[str]) -> tuple[bool, str, list[dict[str, Any]]]:
    """:func:`build` in a forked child, so that no process sees another's global state."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: build, report through the pipe, leave without cleanup
        os.close(read)
        try:
            result: dict[str, Any] = {"ok": True, "error": "", "resources": build(paths)}
        except Exception as exc:  # Synapse raises many kinds for bad files; report, do not crash
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "resources": []}
        with os.fdopen(write, "w") as pipe:
            json.dump(result, pipe)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not text:
        return False, f"building the process failed (wait status {status})", []
    result = json.loads(text)
    return bool(result["ok"]), str(result["error"]), list(result["resources"])


def main() -> int:
    try:
        import synapse.app.generic_worker
        import synapse.app.homeserver  # noqa: F401
    except ImportError:
        print(json.dumps({"process": "*", "ok": False, "error": "Synapse is not installed", "resources": []}))
        return 1
    import logging

    logging.disable(logging.WARNING)  # Synapse's warnings about re-registered metrics and the like
    extra = [arg.removeprefix("--with=") for arg in sys.argv[1:] if arg.startswith("--with=")]
    shared, *workers = [arg for arg in sys.argv[1:] if not arg.startswith("--with=")]
    shared_config = yaml.safe_load(Path(shared).read_text()) or {}
    status = 0
    built: dict[str, tuple[bool, str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="synfleet-servlets-") as scratch:
        database = Path(scratch) / "database.yaml"
        database.write_text(
            yaml.safe_dump({"database": {"name": "sqlite3", "args": {"database": f"{scratch}/homeserver.db"}}})
        )
        processes = [("main", [shared], "main")]
        for path in workers:
            worker = yaml.safe_load(Path(path).read_text()) or {}
            name = Path(path).name.removesuffix(".yaml")
            processes.append((name, [shared, path], signature(shared_config, worker)))
        for name, paths, key in processes:  # main first: its setup prepares the database
            if key not in built:
                built[key] = _in_child([*paths, *extra, str(database)])
            ok, error, resources = built[key]
            status |= not ok
            print(json.dumps({"process": name, "ok": ok, "error": error, "resources": resources}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
