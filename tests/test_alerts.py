"""The fleet's alert rules: valid for promtool in every profile, each one firing on the series it is
about and quiet on the others, loaded by compose's Prometheus, a PrometheusRule for Kubernetes, and
on a running fleet a stopped worker's "down" alert firing in a real Prometheus."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import helpers
from conftest import RunningFleet, fleet_under_test, synfleet
from synfleet.metrics.alerts import RULES, rule_groups
from synfleet.metrics.targets import NGINX_JOB, RULES_FILE, targets
from synfleet.model.load import load_spec
from synfleet.model.profiles import PROFILES
from synfleet.model.schema import FleetSpec
from synfleet.render.deploy import render_deployment
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.kubernetes import PROMETHEUS_RULE_FILE
from synfleet.render.metrics import PROMETHEUS_CONFIG, PROMETHEUS_RULES, metrics_files
from synfleet.run.paths import RunPaths
from synfleet.run.supervisor import Supervisor

SERVER = "example.org"


def metrics_spec(profile: str, **metrics: Any) -> FleetSpec:
    return helpers.profile_with(profile, SERVER, metrics={"enabled": True, **metrics})


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helpers.prometheus_tool("promtool"), *map(str, args)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_rules_pass_promtool_and_name_the_fleets_jobs(profile: str, tmp_path: Path) -> None:
    spec = metrics_spec(profile)
    files = metrics_files(spec, lambda target: "127.0.0.1", grafana=False, nginx="127.0.0.1")
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    config = yaml.safe_load(files[PROMETHEUS_CONFIG])
    assert config["rule_files"] == [RULES_FILE] and PROMETHEUS_RULES.endswith(f"/{RULES_FILE}")
    # `check config` checks the rules file the config names, found beside it.
    for checked in (
        promtool("check", "config", tmp_path / PROMETHEUS_CONFIG),
        promtool("check", "rules", tmp_path / PROMETHEUS_RULES),
    ):
        assert checked.returncode == 0, checked.stdout + checked.stderr
    (group,) = yaml.safe_load(files[PROMETHEUS_RULES])["groups"]
    assert [rule["alert"] for rule in group["rules"]] == [rule.name for rule in RULES]
    jobs = "|".join(sorted({target.job for target in targets(spec)}))
    for rule in group["rules"]:
        assert f'server="{SERVER}"' in rule["expr"], rule
        assert f'job=~"{jobs}"' in rule["expr"] or f'job="{NGINX_JOB}"' in rule["expr"], rule
        assert "{synapse}" not in rule["expr"] and "{nginx}" not in rule["expr"], rule
        assert rule["labels"]["severity"] in {"critical", "warning"} and rule["annotations"]["runbook"], rule


def test_readme_runbook_has_every_rule_as_rendered() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = {
        cells[0].strip("`"): cells
        for line in readme.splitlines()
        if line.startswith("| `") and len(cells := [c.strip() for c in line.strip("|").split("|")]) == 4
    }
    for rule in RULES:
        assert rows[rule.name][1] == rule.duration and rows[rule.name][3] == rule.runbook, rule.name


def test_metrics_off_renders_no_rules() -> None:
    assert rule_groups(helpers.profile_with("small", SERVER)) == []


def process_labels(spec: FleetSpec, which: int = 0, server: str = SERVER) -> dict[str, str]:
    """The scrape labels of the ``which``-th Synapse process of ``spec``."""
    return targets(spec)[which].labels(server)


def series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    matchers = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{metric}{{{matchers}}}", "values": values}


def unit_case(spec: FleetSpec, alert: str) -> tuple[str, list[dict[str, str]], list[dict[str, str]], dict[str, str]]:
    """For ``alert``: when to evaluate, input series that make it fire, series that do not (near misses:
    below its threshold, not for long enough, another server's), and the labels of the firing alert."""
    main, worker = process_labels(spec, 0), process_labels(spec, 1)
    other = process_labels(spec, 1, server="other.org")
    nginx = {"job": NGINX_JOB, "instance": NGINX_JOB, "server": SERVER}
    by_process = {key: worker[key] for key in ("server", "job", "instance")}
    # "1x4 0x8": up for 5 scrapes (to 1m), down for 9 (1m15s to 3m); "1x6 0x2": down from 1m45s, 45s at 2m30s.
    if alert == "SynapseProcessDown":
        fire = [series("up", main, "1x12"), series("up", worker, "1x4 0x8")]
        quiet = [series("up", worker, "1x6 0x2"), series("up", other, "1x4 0x8")]
        return "2m30s", fire, quiet, worker
    if alert == "NginxDown":
        return "2m30s", [series("up", nginx, "1x4 0x8")], [series("up", nginx, "1x6 0x2")], nginx
    if alert == "SynapseReplicationLag":  # main persists 100 events per scrape, the worker stops
        position = "synapse_storage_stream_current_position"
        events = {"stream_name": "events"}
        lead = series(position, main | events, "100+100x40")
        fire = [lead, series(position, worker | events, "100x40")]
        quiet = [lead, series(position, worker | events, "50+100x40"), series(position, other | events, "1x40")]
        return "8m", fire, quiet, worker | events
    if alert == "SynapseHighServerErrorRate":  # 2/s of 5xx out of 4/s, or 0.07/s out of 20/s
        responses = "synapse_http_server_responses_total"
        fire = [
            series(responses, worker | {"code": "500", "method": "GET"}, "0+30x60"),
            series(responses, worker | {"code": "200", "method": "GET"}, "0+30x60"),
        ]
        quiet = [
            series(responses, worker | {"code": "500", "method": "GET"}, "0+1x60"),
            series(responses, worker | {"code": "200", "method": "GET"}, "0+300x60"),
            series(responses, other | {"code": "500", "method": "GET"}, "0+30x60"),
        ]
        return "12m", fire, quiet, by_process
    if alert == "SynapseFederationQueueGrowing":
        pending = "synapse_federation_transaction_queue_pending_pdus"
        fire = [series(pending, worker, "600x80")]
        quiet = [series(pending, worker, "400x80"), series(pending, worker | {"instance": "x"}, "0x60 600x20")]
        return "20m", fire, quiet, by_process
    if alert == "SynapseDatabasePoolExhausted":
        pool = worker | {"name": "database-master"}
        working, most = "synapse_threadpool_working_threads", "synapse_threadpool_max_threads"
        fire = [series(working, pool, "10x40"), series(most, pool, "10x40")]
        quiet = [series(working, pool, "8x40"), series(most, pool, "10x40")]
        return "8m", fire, quiet, by_process | {"name": "database-master"}
    raise AssertionError(f"no test case for {alert}")


def test_every_rule_fires_on_its_series_and_stays_quiet_otherwise(tmp_path: Path) -> None:
    spec = metrics_spec("small")
    (group,) = rule_groups(spec)
    # Without annotations: their templates are checked by `promtool check rules`; here expressions and `for`.
    rules = [{key: value for key, value in rule.items() if key != "annotations"} for rule in group["rules"]]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": group["name"], "rules": rules}]}))
    tests = []
    for rule in rules:
        at, fire, quiet, labels = unit_case(spec, rule["alert"])
        expected = {"exp_labels": {"severity": rule["labels"]["severity"], **labels}}
        for inputs, alerts in ((fire, [expected]), (quiet, [])):
            tests.append(
                {
                    "name": f"{rule['alert']} {'fires' if alerts else 'stays quiet'}",
                    "interval": "15s",
                    "input_series": inputs,
                    "alert_rule_test": [{"eval_time": at, "alertname": rule["alert"], "exp_alerts": alerts}],
                }
            )
    unit_tests = {"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": tests}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(unit_tests))
    result = promtool("test", "rules", tmp_path / "tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(tests) == 2 * len(RULES)


def test_compose_prometheus_loads_the_rules_and_scrapes_nginx(tmp_path: Path) -> None:
    spec = metrics_spec("small")
    deploy = render_deployment(spec, tmp_path)
    config = yaml.safe_load((deploy / PROMETHEUS_CONFIG).read_text())
    assert config["rule_files"] == [RULES_FILE]
    (nginx,) = [job for job in config["scrape_configs"] if job["job_name"] == NGINX_JOB]
    assert nginx["static_configs"][0]["targets"] == [f"nginx:{spec.metrics.nginx_status_port}"]
    prometheus = yaml.safe_load((deploy / "docker-compose.yml").read_text())["services"]["prometheus"]
    assert f"./{PROMETHEUS_RULES}:/etc/prometheus/{RULES_FILE}:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert yaml.safe_load((deploy / PROMETHEUS_RULES).read_text())["groups"] == rule_groups(spec)
    checked = promtool("check", "config", deploy / PROMETHEUS_CONFIG)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_kubernetes_renders_a_prometheus_rule_beside_the_manifests(tmp_path: Path) -> None:
    spec = metrics_spec("small")
    (tmp_path / "fleet.toml").write_text(fleet_toml(spec))
    synfleet("render", "--target", "kubernetes", "--trial-services", directory=tmp_path, check=True)
    tree = tmp_path / "deploy" / "kubernetes"
    kustomization = yaml.safe_load((tree / "kustomization.yaml").read_text())
    (rule,) = yaml.safe_load_all((tree / PROMETHEUS_RULE_FILE).read_text())
    # Structurally: kubernetes-validate has no schema for the operator's CRD.
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == kustomization["namespace"] and rule["metadata"]["name"]
    assert PROMETHEUS_RULE_FILE not in kustomization["resources"]
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == rule_groups(spec, nginx=False)
    names = [r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]]
    assert names == [r.name for r in RULES if not r.nginx] and "NginxDown" not in names
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = promtool("check", "rules", tmp_path / "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The scrape config for Kubernetes loads no rules file of its own: the operator loads the rule.
    assert "rule_files" not in yaml.safe_load((tree / "prometheus" / "prometheus.yml").read_text())
    assert not metrics_files(helpers.profile_with("small", SERVER), lambda t: None, grafana=False)


fleet = fleet_under_test(RunningFleet, "small", metrics=helpers.metrics_on_free_ports)

#: The live test's scrape and evaluation interval: the rendered 15s would make it wait up to 30s
#: more for the same `for`.
LIVE_INTERVAL = 1.0


def alerts(port: int) -> list[dict[str, Any]]:
    return list(httpx.get(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5).json()["data"]["alerts"])


def up(port: int) -> dict[str, float]:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up"}, timeout=5).json()
    except (httpx.HTTPError, ValueError):  # not answering, or not in JSON (busy)
        return {}
    return {r["metric"]["instance"]: float(r["value"][1]) for r in answer["data"]["result"]}


@pytest.mark.integration
@pytest.mark.prerequisite(helpers.synapse_reason())
def test_a_stopped_worker_fires_its_down_alert(fleet: RunningFleet, tmp_path: Path) -> None:
    metrics = fleet.directory / "run" / "metrics"
    config = yaml.safe_load((metrics / "prometheus.yml").read_text())
    interval = f"{LIVE_INTERVAL:g}s"
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(metrics / RULES_FILE, tmp_path / RULES_FILE)
    (down_rule,) = [r for r in RULES if r.name == "SynapseProcessDown"]
    for_seconds = float(down_rule.duration.removesuffix("m")) * 60
    supervisor = Supervisor(RunPaths(fleet.directory))
    fleet_targets = targets(load_spec(fleet.directory))
    victim = fleet_targets[-1].process
    with helpers.prometheus(tmp_path / "prometheus.yml", tmp_path / "data") as port:
        try:
            processes = {t.process for t in fleet_targets} | {NGINX_JOB}
            everything_up = dict.fromkeys(processes, 1.0)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and up(port) != everything_up:
                time.sleep(LIVE_INTERVAL)
            assert up(port) == everything_up
            assert alerts(port) == []  # a healthy fleet fires nothing, not even pending

            supervisor.stop(victim)
            stopped = time.monotonic()
            firing: list[dict[str, Any]] = []
            while not firing and time.monotonic() - stopped < for_seconds + 30:
                time.sleep(LIVE_INTERVAL)
                firing = [a for a in alerts(port) if a["state"] == "firing"]
            fired_after = time.monotonic() - stopped
            print(f"\n{victim} stopped: SynapseProcessDown firing after {fired_after:.1f}s (for: {down_rule.duration})")
            assert [(a["labels"]["alertname"], a["labels"]["instance"]) for a in firing] == [
                ("SynapseProcessDown", victim)
            ]
            assert for_seconds <= fired_after <= for_seconds + 4 * LIVE_INTERVAL + 5
        finally:
            supervisor.start(victim)
