"""Load Synapse process configs with Synapse's own config classes, as the processes will.

Run as ``python -m synfleet.check.synapse_loader HOMESERVER_YAML [WORKER_YAML ...]``; prints one
JSON object per process (main first): ``{"process": ..., "ok": ..., "error": ...}``. A separate
process keeps Synapse's imports and global state out of synfleet.
"""

from __future__ import annotations

import json
import sys

from synfleet.model.synapse import WORKER_MODULE


def load(paths: list[str]) -> tuple[bool, str]:
    from synapse.config._base import ConfigError
    from synapse.config.homeserver import HomeServerConfig

    argv = [arg for path in paths for arg in ("--config-path", path)]
    try:
        config = HomeServerConfig.load_config("synfleet check", argv)
    except ConfigError as exc:
        where = ".".join(str(p) for p in (exc.path or ()))
        return False, f"{where}: {exc.msg}" if where else exc.msg
    except Exception as exc:  # Synapse raises many kinds for bad files; report, do not crash
        return False, f"{type(exc).__name__}: {exc}"
    if len(paths) > 1:
        if config.worker.worker_app != WORKER_MODULE:
            return False, f"worker_app is {config.worker.worker_app!r}, expected {WORKER_MODULE}"
        if not config.worker.worker_name:
            return False, "worker_name is missing"
    return True, ""


def main() -> int:
    try:
        import synapse  # noqa: F401
    except ImportError:
        print(json.dumps({"process": "*", "ok": False, "error": "Synapse is not installed"}))
        return 1
    shared, *workers = sys.argv[1:]
    status = 0
    for name, paths in [
        ("main", [shared]),
        *((w.rsplit("/", 1)[-1].removesuffix(".yaml"), [shared, w]) for w in workers),
    ]:
        ok, error = load(paths)
        status |= not ok
        print(json.dumps({"process": name, "ok": ok, "error": error}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
