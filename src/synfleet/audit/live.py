"""Confirm the audit's evaluation with real nginx: the config runs in a temp prefix, on a free
loopback port, with a stub on every proxy target: every upstream server, and every address a
``proxy_pass`` names without an upstream block (``http://localhost:8080``, ``http://unix:/x.sock:``).
Requests that could go nowhere but to the machine's real services are not sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synfleet.audit.findings import ERROR, WARNING, Finding
from synfleet.audit.repair import TestedConfig
from synfleet.errors import BadRequest
from synfleet.layout import worker_of_server
from synfleet.nginx.binary.command import NginxProcess, test_config, world_readable_tempdir
from synfleet.nginx.binary.harness import Probe, StubUpstreams, send_all
from synfleet.nginx.config import NginxModel, Outcome, build_config, parse_config, proxy_target, walk
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

MODEL_MISMATCH = "model_mismatch"
#: Up to this share of the requests analysed, nginx disagreeing with the evaluation is a warning;
#: above it, an error: the other findings cannot be trusted.
MAX_MISMATCH_SHARE = 0.01


def _strip(block: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``block`` without the machine-bound directives, at every depth."""
    return [{**d, "block": _strip(d["block"])} if "block" in d else d for d in block if d["directive"] not in DROPPED]


def literal_target(url: str) -> tuple[str, str] | None:
    """(address, URI part) of a ``proxy_pass`` URL whose address has no variables, else None."""
    address, uri = proxy_target(url)
    return None if "$" in address else (address, uri)


@dataclass(frozen=True)
class RunnableCopy:
    conf: Path  # what nginx runs
    model: NginxModel  # the same config before its literal proxy targets moved to stubs
    stubs: dict[str, str]  # socket path -> the upstream server's worker, or the proxy_pass address, it stands for


def runnable_copy(tested: TestedConfig, directory: Path, port: int) -> RunnableCopy:
    """One-file config: the routing server alone on 127.0.0.1:port, every upstream server and every
    literal proxy target (at any depth, in ``if`` blocks too) on a stub socket, the target's URI kept.

    The model reads the copy after its upstream servers moved (consistent hashing places requests by
    the servers' address text, so it must see the same addresses as nginx), but before the literal
    targets moved: it evaluates those as written, and their stubs answer in the same terms.
    """
    top = _strip(parse_config(tested.conf))
    http = next(d for d in top if d["directive"] == "http")
    stubs: dict[str, str] = {}

    def stub(name: str) -> str:
        path = f"{directory}/s{len(stubs)}.sock"
        stubs[path] = name
        return path

    upstreams = [d for d in http["block"] if d["directive"] == "upstream"]
    for upstream in upstreams:
        for server in (d for d in upstream["block"] if d["directive"] == "server"):
            path = stub(worker_of_server(server["args"][0]))
            server["args"] = [f"unix:{path}", *[a for a in server["args"][1:] if not a.startswith("backup")]]
    servers = [d for d in http["block"] if d["directive"] == "server"]
    routing = next((s for s in servers if any(d["directive"] == "location" for d in s["block"])), servers[0])
    routing["block"].insert(0, {"directive": "listen", "args": [f"127.0.0.1:{port}"]})
    temp = [
        {"directive": f"{kind}_temp_path", "args": [str(directory / kind)]}
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    ]
    kept = [d for d in http["block"] if d["directive"] != "server" and not d["directive"].endswith("_temp_path")]
    http["block"] = [*temp, *kept, routing]
    top.append({"directive": "error_log", "args": [str(directory / "error.log")]})
    if not any(d["directive"] == "events" for d in top):  # nginx will not start without one
        top.insert(0, {"directive": "events", "args": [], "block": []})
    model_conf = directory / "model.conf"
    model_conf.write_text(build_config(top) + "\n")

    names = {u["args"][0] for u in upstreams}
    literal: dict[str, str] = {}  # address -> its stub's socket
    for directive in walk(routing["block"]):
        target = literal_target(directive["args"][0]) if directive["directive"] == "proxy_pass" else None
        if target is not None and target[0] not in names:
            address, uri = target
            literal[address] = literal.get(address) or stub(address)
            directive["args"] = [f"http://unix:{literal[address]}:{uri}"]
    conf = directory / "nginx.conf"
    conf.write_text(build_config(top) + "\n")
    return RunnableCopy(conf, NginxModel.load(model_conf), stubs)


@dataclass
class Confirmation:
    """Real nginx's answers to the corpus compared with the evaluation of the same requests."""

    agreed: int = 0
    not_asked: int = 0  # evaluated to a target that has no stub, so not sent
    mismatches: list[tuple[Probe, str, str]] = field(default_factory=list)  # (request, nginx, evaluated)

    def findings(self, requests: int) -> list[Finding]:
        """``model_mismatch`` when nginx disagreed: an error on more than MAX_MISMATCH_SHARE of the
        ``requests`` analysed, a warning otherwise."""
        if not self.mismatches:
            return []
        probe, nginx, evaluated = self.mismatches[0]
        count = len(self.mismatches)
        return [
            Finding(
                MODEL_MISMATCH,
                ERROR if count > MAX_MISMATCH_SHARE * requests else WARNING,
                f"real nginx answered {count} of {requests} requests ({count / max(requests, 1):.1%}) otherwise than "
                f"synfleet's evaluation, so the other findings may be wrong where nginx disagreed; e.g. nginx answered "
                f"{probe.method} {probe.url} with {nginx}, synfleet evaluated {evaluated}",
                "report this config to synfleet",
                probe.method,
                probe.url,
                got=f"nginx: {nginx}",
                want=f"evaluated: {evaluated}",
                count=count,
            )
        ]


def _stubbed(outcome: Outcome, copy: RunnableCopy) -> bool:
    """nginx answers the request itself or passes it to a stub: not to an address that a variable
    names (``proxy_pass http://$backend`` with no upstream block of that name), which has none."""
    if outcome.status is not None or outcome.upstream in copy.model.upstreams:
        return True
    block = outcome.location.block if outcome.location else []
    return all(literal_target(d["args"][0]) for d in block if d["directive"] == "proxy_pass")


def confirm_with_nginx(tested: TestedConfig, probes: list[Probe]) -> Confirmation | None:
    """Send ``probes`` to real nginx running the config with stubs, and compare its answers with the
    evaluation. None when nginx rejects the config even with every proxy target on a stub (a config
    `nginx -t` failed only for host names that do not resolve here is confirmed)."""
    confirmation = Confirmation()
    with world_readable_tempdir("sfa-") as directory:
        port = free_port()
        copy = runnable_copy(tested, directory, port)
        if (
            not tested.passes
            and test_config(directory, copy.conf, directory / "test.log", directory / "pid").returncode
        ):
            return None
        asked: list[tuple[Probe, Outcome]] = []
        for probe in probes:
            try:
                outcome = copy.model.evaluate(probe.method, probe.url, dict(probe.headers), "127.0.0.1")
            except BadRequest:
                continue
            if _stubbed(outcome, copy):
                asked.append((probe, outcome))
            else:
                confirmation.not_asked += 1
        with StubUpstreams(copy.stubs):
            nginx = NginxProcess(directory)
            nginx.start(port)
            try:
                answers = send_all(port, [probe for probe, _ in asked])
            finally:
                nginx.stop()
    # The copy's upstream servers are stub sockets; name them back after the original workers.
    original = {worker_of_server(f"unix:{path}"): name for path, name in copy.stubs.items()}
    for (probe, outcome), (status, worker) in zip(asked, answers, strict=True):
        if outcome.status is not None:
            ok = status == outcome.status or (outcome.status in (404, 405) and status in (404, 405))
            evaluated = str(outcome.status)
        else:
            workers = (outcome.worker,) if outcome.worker is not None else outcome.candidates
            expected = {original.get(w, w) for w in workers}
            ok = status == 200 and worker in expected
            evaluated = " or ".join(sorted(expected))
        if ok:
            confirmation.agreed += 1
        else:
            confirmation.mismatches.append((probe, f"{status} from {worker}" if worker else str(status), evaluated))
    return confirmation
