"""Shared fixtures: real nginx on a rendered routing config, with stub workers on its sockets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from synfleet.render.nginx import NginxLayout, render_nginx
from synfleet.routing.plan import RoutingPlan
from synfleet.routing.probe import NginxProcess, StubUpstreams, free_port, world_readable_tempdir
from synfleet.spec.fleet import Fleet

LOG_LINE = re.compile(r'"(?P<request>[^"]*)" (?P<status>\d+) \d+ route=(?P<route>\S+) upstream=(?P<upstream>\S+)')


@dataclass
class LiveNginx:
    plan: RoutingPlan
    port: int
    directory: Path
    nginx: NginxProcess

    def access_log(self) -> list[dict[str, str]]:
        """Parsed access log lines (stop nginx first so the buffer is flushed)."""
        text = (self.directory / "logs" / "access.log").read_text()
        return [m.groupdict() for m in map(LOG_LINE.search, text.splitlines()) if m]


@contextmanager
def live_nginx(fleet: Fleet) -> Iterator[LiveNginx]:
    """Render ``fleet``'s nginx config into a temp prefix and run it with a stub on every socket."""
    with world_readable_tempdir("synfleet-test-") as directory:
        port = free_port()
        layout = NginxLayout(
            socket_dir=str(directory / "sockets"),
            log_dir=str(directory / "logs"),
            listen=(f"127.0.0.1:{port}",),
            pid_file=str(directory / "nginx.pid"),
            temp_dir=str(directory / "tmp"),
        )
        for sub in ("logs", "tmp", "conf"):
            (directory / sub).mkdir()
        plan = RoutingPlan(fleet, socket_dir=layout.socket_dir)
        for name, text in render_nginx(plan, layout).items():
            (directory / "conf" / name).write_text(text)
        sockets = {
            server.removeprefix("unix:"): worker
            for upstream in plan.upstreams.values()
            for worker, server in zip(upstream.workers, upstream.servers, strict=True)
        }
        with StubUpstreams(sockets):
            nginx = NginxProcess(directory / "conf")
            nginx.start(port)
            try:
                yield LiveNginx(plan, port, directory, nginx)
            finally:
                nginx.stop()
