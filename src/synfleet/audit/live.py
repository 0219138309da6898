"""Confirm the audit's evaluation with real nginx: the config runs in a temp prefix, on a free
loopback port, with a stub on every upstream server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import crossplane

from synfleet.audit.repair import TestedConfig
from synfleet.errors import BadRequest
from synfleet.layout import worker_of_server
from synfleet.nginx.command import NginxProcess, world_readable_tempdir
from synfleet.nginx.config import NginxModel, parse_config
from synfleet.nginx.harness import Probe, StubUpstreams, send_all
from synfleet.system import free_port

#: Directives that tie a config to its machine; dropped from the runnable copy.
DROPPED = {
    "user",
    "pid",
    "error_log",
    "access_log",
    "daemon",
    "ssl_certificate",
    "ssl_certificate_key",
    "ssl_stapling",
    "ssl_stapling_verify",
    "http2",
    "ssl_trusted_certificate",
    "ssl_dhparam",
    "listen",
}


def _strip(block: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``block`` without the machine-bound directives, at every depth."""
    return [{**d, "block": _strip(d["block"])} if "block" in d else d for d in block if d["directive"] not in DROPPED]


def runnable_copy(tested: TestedConfig, directory: Path, port: int) -> tuple[Path, dict[str, str]]:
    """One-file config: upstream servers on stub sockets, the routing server alone on 127.0.0.1:port."""
    top = _strip(parse_config(tested.conf))
    http = next(d for d in top if d["directive"] == "http")
    sockets: dict[str, str] = {}
    for upstream in (d for d in http["block"] if d["directive"] == "upstream"):
        for server in (d for d in upstream["block"] if d["directive"] == "server"):
            path = f"{directory}/s{len(sockets)}.sock"
            sockets[path] = worker_of_server(server["args"][0])
            server["args"] = [f"unix:{path}", *[a for a in server["args"][1:] if not a.startswith("backup")]]
    servers = [d for d in http["block"] if d["directive"] == "server"]
    routing = next((s for s in servers if any(d["directive"] == "location" for d in s["block"])), servers[0])
    routing["block"].insert(0, {"directive": "listen", "args": [f"127.0.0.1:{port}"]})
    temp = [
        {"directive": f"{kind}_temp_path", "args": [str(directory / kind)]}
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    ]
    http["block"] = [*temp, *[d for d in http["block"] if d["directive"] != "server"], routing]
    top.append({"directive": "error_log", "args": [str(directory / "error.log")]})
    conf = directory / "nginx.conf"
    conf.write_text(crossplane.build(top) + "\n")
    return conf, sockets


def confirm_with_nginx(tested: TestedConfig, probes: list[Probe]) -> tuple[int, list[str]]:
    """(requests nginx answered as evaluated, descriptions of those it did not)."""
    with world_readable_tempdir("sfa-") as directory:
        port = free_port()
        conf, sockets = runnable_copy(tested, directory, port)
        model = NginxModel.load(conf)
        with StubUpstreams(sockets):
            nginx = NginxProcess(directory)
            nginx.start(port)
            try:
                answers = send_all(port, probes)
            finally:
                nginx.stop()
    # The runnable copy's servers are stub sockets; name them back after the original workers.
    original = {worker_of_server(f"unix:{path}"): name for path, name in sockets.items()}
    agreed, mismatches = 0, []
    for probe, (status, worker) in zip(probes, answers, strict=True):
        try:
            outcome = model.evaluate(probe.method, probe.url, dict(probe.headers), "127.0.0.1")
        except BadRequest:
            continue
        if outcome.status is not None:
            ok = status == outcome.status or (outcome.status in (404, 405) and status in (404, 405))
        elif outcome.worker is not None:
            ok = (status, worker) == (200, original.get(outcome.worker, outcome.worker))
        else:
            ok = status == 200 and worker in {original.get(c, c) for c in outcome.candidates}
        if ok:
            agreed += 1
        else:
            mismatches.append(
                f"{probe.method} {probe.url}: nginx {status} {worker}, evaluated {outcome.status or ''}"
                f" {outcome.worker or outcome.candidates}"
            )
    return agreed, mismatches
