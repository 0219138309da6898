"""`synfleet audit`: what an existing nginx config for Synapse workers gets wrong.

1. ``nginx -t`` on a copy, repaired where the fix is obvious (:mod:`synfleet.audit.repair`);
2. the copy parsed and every request of a corpus evaluated with nginx's semantics, compared with
   synfleet's route table (:mod:`synfleet.audit.auditor`);
3. where nginx runs, the evaluation confirmed by real nginx (:mod:`synfleet.audit.live`).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from synfleet.audit.auditor import Auditor, missing_proxy_pass, nginx_findings
from synfleet.audit.findings import ERROR, WARNING, AuditReport, Finding
from synfleet.audit.live import confirm_with_nginx
from synfleet.audit.repair import test_and_repair
from synfleet.audit.roles import infer_fleet
from synfleet.model.fleet import Fleet
from synfleet.nginx.config import NginxModel
from synfleet.routing.corpus import Corpus


def audit(source: Path, fleet: Fleet | None = None, corpus_size: int = 1200, confirm: bool = True) -> AuditReport:
    """Audit the nginx config at ``source`` (a directory with nginx.conf, or one file)."""
    report = AuditReport(str(source))
    with tempfile.TemporaryDirectory(prefix="synfleet-audit-") as temp:
        tested = test_and_repair(source, Path(temp) / "config")
        report.nginx_passes = tested.passes
        report.findings += nginx_findings(tested)
        model = NginxModel.load(tested.conf)
        report.findings += missing_proxy_pass(model, tested)
        auditor = Auditor(model, fleet or infer_fleet(model))
        corpus = list(Corpus(seed=11, size=corpus_size))
        report.requests = auditor.routing(corpus)
        rng = random.Random(5)
        auditor.rooms(rng)
        auditor.sync(rng)
        auditor.admin()
        auditor.keepalive(corpus[:50])
        auditor.unused()
        report.findings += auditor.findings
        if confirm and tested.passes:
            report.confirmed, mismatches = confirm_with_nginx(tested, corpus)
            if mismatches:
                report.findings.append(
                    Finding(
                        "model_mismatch",
                        WARNING,
                        f"real nginx answered {len(mismatches)} requests differently than synfleet's evaluation; "
                        f"findings about them may be wrong (e.g. {mismatches[0]})",
                        "report this config to synfleet",
                        count=len(mismatches),
                    )
                )
    order = {ERROR: 0, WARNING: 1}
    report.findings.sort(key=lambda f: (order[f.severity], f.kind))
    return report
