"""`synfleet audit`: what an existing nginx config for Synapse workers gets wrong.

0. the input checked to be a readable nginx config (:mod:`synfleet.audit.source`);
1. ``nginx -t`` on a copy, repaired where the fix is obvious (:mod:`synfleet.audit.repair`);
2. the copy parsed and every request of a corpus evaluated with nginx's semantics, compared with
   synfleet's route table (:mod:`synfleet.audit.auditor`); what a client decides for Synapse
   (:mod:`synfleet.audit.trust`) and who else can reach its sockets (:mod:`synfleet.audit.sockets`);
3. where nginx runs, the evaluation confirmed by real nginx (:mod:`synfleet.audit.live`).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from synfleet.audit.auditor import Auditor, missing_proxy_pass, nginx_findings
from synfleet.audit.findings import ERROR, WARNING, AuditReport
from synfleet.audit.live import MODEL_MISMATCH, confirm_with_nginx
from synfleet.audit.repair import TestedConfig, test_and_repair
from synfleet.audit.roles import infer_fleet
from synfleet.audit.sockets import reachable_sockets
from synfleet.audit.source import ConfigSource
from synfleet.audit.synapse_config import SynapseConfig
from synfleet.audit.trust import body_size, forwarded_for, request_uris
from synfleet.errors import UsageError
from synfleet.model.fleet import Fleet
from synfleet.model.schema.synapse import Media
from synfleet.nginx.binary.harness import Probe
from synfleet.nginx.config import NginxModel, parse_config
from synfleet.routing.corpus import Corpus

#: The media upload size of a fleet file that does not set one.
DEFAULT_MAX_UPLOAD_BYTES = Media().max_upload_bytes


def load_model(source: ConfigSource, tested: TestedConfig) -> NginxModel:
    """The tested copy's model; UsageError naming ``source`` if it cannot be parsed (in nginx's words
    when `nginx -t` failed too: crossplane's are often empty) or routes nothing (no http or server block)."""
    try:
        parse_config(tested.conf)
    except UsageError as error:
        detail = source.in_user_terms(str(error), tested.directory)
        if tested.problems and not tested.passes and not tested.problems[-1].repaired:
            problem = tested.problems[-1]
            where = [problem.file] if source.is_directory else []
            if problem.line:
                where.append(f"line {problem.line}")
            detail = f"{', '.join(where)}: {problem.message}" if where else problem.message
        raise UsageError(f"{source.given}: not an nginx config synfleet can parse: {detail}") from None
    try:
        return NginxModel.load(tested.conf)
    except UsageError as error:
        detail = source.in_user_terms(str(error), tested.directory).removeprefix(f"{source.given}: ")
        raise UsageError(f"{source.given}: not an nginx config synfleet can audit: {detail}") from None


def _auditor(
    model: NginxModel, fleet: Fleet | None, synapse: SynapseConfig | None, corpus: list[Probe], report: AuditReport
) -> Auditor:
    if synapse is not None:
        known, report.assumptions = synapse.fleet()
        return Auditor(model, known, synapse.process_for)
    if fleet is not None:
        return Auditor(model, fleet)
    guessed, report.assumptions = infer_fleet(model, corpus)
    return Auditor(model, guessed)


def audit(
    source: Path,
    fleet: Fleet | None = None,
    corpus_size: int = 1200,
    confirm: bool = True,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    socket_dir: Path | None = None,
    synapse: SynapseConfig | None = None,
) -> AuditReport:
    """Audit the nginx config at ``source`` (a directory with nginx.conf, or one file).

    ``max_upload_bytes`` is the fleet's media upload size; sockets in ``socket_dir`` (a deployment's
    run/sockets) are checked along with those the config names. Which process may serve what comes
    from ``synapse`` (the deployment's Synapse config), else ``fleet``, else the config's names, and
    the report lists what was assumed. UsageError, naming ``source``, when it is not an nginx config
    that can be read and parsed.
    """
    config = ConfigSource.check(source)
    report = AuditReport(str(source))
    with tempfile.TemporaryDirectory(prefix="synfleet-audit-") as temp:
        tested = test_and_repair(config, Path(temp) / "config")
        report.nginx_passes = tested.passes
        report.findings += nginx_findings(tested)
        model = load_model(config, tested)
        report.findings += missing_proxy_pass(model, tested)
        report.findings += reachable_sockets(model, socket_dir)
        corpus = list(Corpus(seed=11, size=corpus_size))
        auditor = _auditor(model, fleet, synapse, corpus, report)
        report.requests = auditor.routing(corpus)
        report.findings += forwarded_for(model)
        report.findings += body_size(model, request_uris(p.url for p in corpus), max_upload_bytes)
        rng = random.Random(5)
        auditor.rooms(rng)
        auditor.sync(rng)
        auditor.admin()
        auditor.keepalive(corpus[:50])
        auditor.unused()
        report.findings += auditor.findings
        if auditor.unknown_servers:
            report.assumptions.append(
                "no Synapse process listens on "
                + ", ".join(sorted(auditor.unknown_servers))
                + ": requests there are taken as reaching a process that serves none of the streams"
            )
        if confirm:
            confirmation = confirm_with_nginx(tested, corpus)
            if confirmation is not None:
                report.confirmed, report.not_asked = confirmation.agreed, confirmation.not_asked
                report.findings += confirmation.findings(report.requests)
    order = {ERROR: 0, WARNING: 1}
    # model_mismatch first, whatever else there is: it says how far the other findings hold.
    report.findings.sort(key=lambda f: (f.kind != MODEL_MISMATCH, order[f.severity], f.kind))
    return report
