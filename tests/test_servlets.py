"""The route table proven against the endpoints the installed Synapse registers on each process.

Each fleet is rendered into a temp dir; Synapse's own listener code builds every process's
resources from the rendered files (no process runs), and every registered endpoint is routed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import helpers
from helpers import copy_fleet_case, profile_with, synapse_reason
from synfleet.check.deployment import endpoints_served, scratch_mapping, synapse_copy
from synfleet.check.endpoints import Proof, Registrations, load_registrations, prove, rendered_writers, write_out
from synfleet.layout import SHARED_CONFIG, SYNAPSE_DIR, WORKER_CONFIG_DIR
from synfleet.model.fleet import Fleet, Role
from synfleet.model.load import load_spec
from synfleet.model.profiles import PROFILES
from synfleet.render.deploy import DEPLOY_DIR, render_deployment
from synfleet.render.fleet_file import fleet_toml
from synfleet.routing.plan import RoutingPlan
from synfleet.routing.table import CLIENT, ROOM, ROUTES, Key, Rule

#: Features a fleet may switch on whose endpoints workers serve: their routes are proven too.
EXPERIMENTAL = {"experimental_features": {"msc3814_enabled": True, "msc3720_enabled": True, "msc4306_enabled": True}}

FLEETS = ("seed", "small", "monolith", "all_dedicated_writers")


def rendered(name: str, directory: Path) -> Path:
    """``directory`` holding the fleet ``name`` (a profile, else a fixture case), rendered."""
    if name in PROFILES:
        directory.mkdir(parents=True)
        (directory / "fleet.toml").write_text(fleet_toml(profile_with(name)))
    else:
        copy_fleet_case(name, directory)
    render_deployment(load_spec(directory), directory)
    return directory


@dataclass(frozen=True)
class Listed:
    """A rendered fleet and what each of its processes registers."""

    fleet: Fleet
    copy: Path  # the rendered Synapse files, remapped
    registrations: dict[str, Registrations]
    writers: dict[str, list[str]]

    def prove(self, rules: tuple[Rule, ...] = ROUTES) -> Proof:
        return prove(RoutingPlan(self.fleet, rules=rules), self.registrations, self.writers)


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Listed]:
    """The endpoints of a fleet's processes, listed once per module."""
    helpers.require(synapse_reason())
    done: dict[str, Listed] = {}

    def listing(name: str) -> Listed:
        if name not in done:
            base = tmp_path_factory.mktemp(name)
            directory = rendered(name, base / "fleet")
            spec = load_spec(directory)
            scratch = base / "scratch"
            scratch.mkdir()
            mapping = scratch_mapping(spec, directory, scratch)
            copy = synapse_copy(directory / DEPLOY_DIR / SYNAPSE_DIR, mapping, scratch)
            experimental = base / "experimental.yaml"
            experimental.write_text(yaml.safe_dump(EXPERIMENTAL))
            began = time.monotonic()
            workers = sorted((copy / WORKER_CONFIG_DIR).glob("*.yaml"))
            registrations = load_registrations(copy / SHARED_CONFIG, workers, [experimental])
            print(f"\n{name}: {len(registrations)} processes listed in {time.monotonic() - began:.1f} s")
            done[name] = Listed(spec.fleet, copy, registrations, rendered_writers(copy / SHARED_CONFIG))
        return done[name]

    return listing


@pytest.mark.parametrize("fleet", FLEETS)
def test_every_endpoint_reaches_a_process_that_serves_it(fleet: str, listed: Callable[[str], Listed]) -> None:
    listing = listed(fleet)
    began = time.monotonic()
    proof = listing.prove()
    print(f"{fleet}: {proof.summary()} (proof {time.monotonic() - began:.1f} s)")
    for line in proof.kept_on_main:
        print("  main:", line)
    assert proof.endpoints > 300, "too few endpoints: the listing missed resources"
    assert not proof.unservable, "sent where they cannot be served:\n" + "\n".join(proof.unservable)
    assert not proof.wrong_writer, "\n".join(proof.wrong_writer)
    assert not proof.unlisted_on_main, "on main though a worker serves them:\n" + "\n".join(proof.unlisted_on_main)
    kept = {line.split(" -> ")[1].split(" ")[0] for line in proof.kept_on_main}
    assert kept <= {rule.name for rule in ROUTES if rule.reason}, "kept on main without a reason"


def test_the_proof_finds_endpoints_routed_amiss(listed: Callable[[str], Listed]) -> None:
    """A broad room rule before the main-only and stream rules (the seed's federation rooms bug):
    main's room endpoints go where they are not registered, typing and receipts miss their
    writer; without the admin room rule, a room's admin details stay on main."""
    broad = Rule("rooms_everything", f"{CLIENT}/rooms/{ROOM}/", Role.ROOMS, Key.ROOM)
    rules = (broad, *ROUTES)
    proof = listed("all_dedicated_writers").prove(rules)
    print(proof.summary())
    assert any("/rooms/!abcdef:example.org/forget -> rooms_everything" in line for line in proof.unservable)
    assert any("/rooms/!abcdef:example.org/typing/" in line for line in proof.wrong_writer)
    assert any("/rooms/!abcdef:example.org/receipt/" in line for line in proof.wrong_writer)
    # synfleet check says it in one line, naming each endpoint
    result = endpoints_served(listed("all_dedicated_writers").fleet, [listed("all_dedicated_writers").copy], rules)
    assert not result.ok and "\n" not in result.detail
    assert "/_matrix/client/v3/rooms/!abcdef:example.org/forget -> rooms_everything" in result.detail
    assert result.detail.count("; ") == len(proof.unservable) + len(proof.wrong_writer) - 1
    proof = listed("all_dedicated_writers").prove(tuple(r for r in ROUTES if r.name != "rooms_admin"))
    assert proof.unlisted_on_main == [
        f"{method} /_synapse/admin/v1/rooms/!abcdef:example.org -> main_admin (main)" for method in ("DELETE", "GET")
    ]


def test_regexes_are_written_out_in_every_form() -> None:
    paths = write_out(r"^/_matrix/client/(api/v1|r0)/rooms/(?P<room_id>[^/]*)/(?P<a>join|kick)(/(?P<txn_id>[^/]*))?$")
    assert len(paths) == 8
    assert "/_matrix/client/r0/rooms/!abcdef:example.org/kick/m1.1" in paths
    assert "/_matrix/client/api/v1/rooms/!abcdef:example.org/join" in paths
    assert write_out(r"^/_matrix/client/unstable/im.nheko.summary/rooms/(?P<room_identifier>[^/]*)/summary$") == (
        "/_matrix/client/unstable/im.nheko.summary/rooms/!abcdef:example.org/summary",
        "/_matrix/client/unstable/im.nheko.summary/rooms/%23lobby:example.org/summary",
    )
    with pytest.raises(ValueError, match="unsupported group"):
        write_out(r"^/a(?=b)")


def test_a_request_reaches_the_resource_mounted_deepest() -> None:
    """As Synapse's resource tree dispatches: an admin path registered on the client resource is
    not served (the admin resource takes every /_synapse/admin path)."""
    registrations = Registrations.from_json(
        "p",
        [
            {"prefix": "/_matrix/client", "routes": [["GET", "^/_synapse/admin/v1/whois/(?P<user_id>[^/]*)$"]]},
            {"prefix": "/_synapse/admin", "routes": [["DELETE", "^/_synapse/admin/v1/rooms/(?P<room_id>[^/]*)$"]]},
            {"prefix": "/.well-known/matrix/client", "routes": None},
        ],
    )
    assert not registrations.serves("GET", "/_synapse/admin/v1/whois/@a:b")
    assert registrations.serves("DELETE", "/_synapse/admin/v1/rooms/!r:b")
    assert not registrations.serves("GET", "/_synapse/admin/v1/rooms/!r:b")
    assert registrations.serves("GET", "/.well-known/matrix/client")
    assert [str(e) for e in registrations.endpoints()] == [
        "DELETE /_synapse/admin/v1/rooms/!abcdef:example.org",
        "GET /.well-known/matrix/client",
    ]
