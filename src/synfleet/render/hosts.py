"""A fleet on several hosts: what each host's nginx opens to the others, and how it reaches them.

Synapse's processes keep their UNIX sockets on every host. The links between hosts are TLS with
mutual authentication by the fleet's own CA (:mod:`synfleet.pki.fleet`), on each host's private
address, carried by nginx on both ends: a process calls a relay socket of its own host's nginx
(:class:`~synfleet.render.nginx.Relay`), which carries the connection over TLS to the other host's
nginx (:class:`~synfleet.render.nginx.Gateway`), which passes it to the process's socket there. A
process's inbound requests come from the front's nginx only (its certificate), its replication
requests from the fleet's hosts only (theirs, and the replication secret on top). Redis takes TLS
from the fleet's hosts' relays only, with its password on top. PostgreSQL takes TLS only, from
Synapse's role presenting its certificate, with its password, to its database (its superuser logs
in on the socket only, on every target).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from synfleet.layout import COMPOSE_HOST, Layout
from synfleet.metrics.targets import Target
from synfleet.model.fleet import Service, host_port
from synfleet.model.schema import FleetSpec
from synfleet.model.schema.storage import POSTGRES_SUPERUSER, Database
from synfleet.pki.fleet import FRONT_NAME, Installed, Role, distinguished_name
from synfleet.render.nginx import Gateway, LinkTls, Peer, Relay
from synfleet.routing.plan import RoutingPlan

AUTH_METHOD = "scram-sha-256"
#: From another host, Synapse's role also presents its certificate from the fleet's CA, named as the role.
LINK_AUTH = f"{AUTH_METHOD} clientcert=verify-full"
#: Synapse's role: it logs in, with its password, and owns its database; no privilege beyond that.
SYNAPSE_ROLE_OPTIONS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
#: Synapse's database: UTF-8 with the C collation Synapse requires.
DATABASE_OPTIONS = "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"


@dataclass(frozen=True)
class SuperuserLogin:
    """Who logs in as PostgreSQL's superuser: on the socket only, never with a password, by peer
    authentication (the connecting process's OS account, as the server sees it). Without a
    ``map``, the account named like the role (the ``postgres`` account of the official image);
    with one, the accounts pg_ident.conf maps to ``roles`` (natively: the account that owns the
    cluster)."""

    roles: tuple[str, ...] = (POSTGRES_SUPERUSER,)
    map: str = ""


#: In a container: the image's own ``postgres`` account.
IMAGE_SUPERUSER = SuperuserLogin()


def hba(
    database: Database,
    hosts: tuple[str, ...] = (),
    superuser: SuperuserLogin = IMAGE_SUPERUSER,
    anywhere: bool = False,
) -> str:
    """Who may connect: PostgreSQL's superuser on the socket only (see :class:`SuperuserLogin`);
    Synapse's role to Synapse's database only, with its password, on the socket and from the
    fleet's ``hosts`` (with ``anywhere``, from any address: a pod's, which no one knows in advance)."""
    peer = f"peer map={superuser.map}" if superuser.map else "peer"
    lines = [
        "# Rendered by synfleet: PostgreSQL's superuser on the socket only, by peer authentication (no password);",
        "# Synapse's role to its database only, with its password (on the socket, and from the fleet's hosts).",
        f"local all {','.join(superuser.roles)} {peer}",
        f"local {database.name} {database.user} {AUTH_METHOD}",
    ]
    for (
        address
    ) in hosts:  # TLS only, with the fleet's certificates (see :func:`synfleet.render.synapse.database_config`)
        prefix = 128 if ":" in address else 32
        lines.append(f"hostssl {database.name} {database.user} {address}/{prefix} {LINK_AUTH}")
    if anywhere:
        lines.append(f"host {database.name} {database.user} all {AUTH_METHOD}")
    return "\n".join(lines) + "\n"


def local_metrics(spec: FleetSpec, host: str) -> Callable[[Target], str | None]:
    """Where a host's Prometheus finds a process's metrics: 127.0.0.1 for the processes of ``host``
    (every process without [hosts]); other hosts' metrics listeners take no connections from here."""
    return lambda target: "127.0.0.1" if spec.fleet.host_of(target.process) == host else None


def local_nginx(spec: FleetSpec, host: str) -> str | None:
    """Where a host's Prometheus finds nginx's status port: 127.0.0.1 where ``host`` runs nginx, else None."""
    return "127.0.0.1" if runs_nginx(spec, host) else None


def runs_nginx(spec: FleetSpec, host: str) -> bool:
    """Whether ``host`` runs nginx: the front's host, every host another host reaches, and every
    host whose processes reach another."""
    return spec.fleet.front == host or bool(gateways(spec, host, COMPOSE_HOST) or relays(spec, host, COMPOSE_HOST))


def routed(spec: FleetSpec) -> set[str]:
    """The workers nginx routes requests to."""
    return {w for upstream in RoutingPlan(spec.fleet).upstreams.values() for w in upstream.workers}


def front_servers(spec: FleetSpec, layout: Layout) -> dict[str, str]:
    """The front nginx's upstream ``server`` for each worker on another host: its inbound relay."""
    front = spec.fleet.front
    return {
        w.name: f"unix:{layout.inbound_relay(w.name)}" for w in spec.fleet.workers if spec.hosts and w.host != front
    }


def relays(spec: FleetSpec, host: str, layout: Layout) -> tuple[Relay, ...]:
    """The links from ``host`` to the others: on the front's host, to each routed worker elsewhere
    (with the front's certificate); on a host with Synapse processes, to the replication listener
    of each process in ``instance_map`` elsewhere, and to Redis on its host."""
    if not spec.hosts:
        return ()
    fleet, found = spec.fleet, []
    if fleet.front == host:
        inbound = routed(spec)
        for worker in fleet.workers:
            if worker.host != host and worker.name in inbound:
                found.append(
                    Relay(
                        f"{worker.name} inbound",
                        layout.inbound_relay(worker.name),
                        worker.inbound_link,
                        worker.host,
                        True,
                    )
                )
    if any(w.host == host for w in fleet.workers):
        for worker in fleet.workers:
            if worker.host != host and worker.in_instance_map:
                found.append(
                    Relay(
                        f"{worker.name} replication",
                        layout.replication_relay(worker.name),
                        worker.replication_link,
                        worker.host,
                    )
                )
        redis_host = fleet.host_of(Service.REDIS)
        if spec.redis.local and redis_host != host:
            target = host_port(fleet.host(redis_host).address, spec.redis.port)
            found.append(Relay("redis", layout.redis_relay, target, redis_host))
    return tuple(found)


def link_tls(spec: FleetSpec, layout: Layout) -> LinkTls | None:
    """The certificates nginx's links present and trust, in ``layout``'s secrets directory."""
    if not spec.hosts:
        return None
    peers = [(distinguished_name(spec, Role.FRONT, FRONT_NAME), Peer.FRONT)]
    peers += [(distinguished_name(spec, Role.HOST, host), Peer.HOST) for host in spec.hosts]
    return LinkTls(
        trust=layout.secret(Installed.TRUST.certificate),
        certificate=layout.secret(Installed.HOST.certificate),
        key=layout.secret(Installed.HOST.key),
        front_certificate=layout.secret(Installed.FRONT.certificate),
        front_key=layout.secret(Installed.FRONT.key),
        peers=tuple(peers),
    )


def gateways(spec: FleetSpec, host: str, layout: Layout) -> tuple[Gateway, ...]:
    """The links into ``host``'s Synapse sockets: inbound HTTP for the workers the front nginx
    (on another host) routes to, replication for every process other processes call."""
    if not spec.hosts:
        return ()
    front = spec.fleet.front
    inbound = routed(spec)
    found = []
    for worker in spec.fleet.workers:
        if worker.host != host:
            continue
        if host != front and worker.name in inbound:
            found.append(
                Gateway(
                    f"{worker.name} inbound",
                    worker.inbound_link,
                    (spec.fleet.host(front).address,),
                    layout.inbound_socket(worker.name),
                    Peer.FRONT,
                )
            )
        if worker.in_instance_map and len(spec.hosts) > 1:
            found.append(
                Gateway(
                    f"{worker.name} replication",
                    worker.replication_link,
                    spec.fleet.host_addresses,
                    layout.replication_socket(worker.name),
                    Peer.HOST,
                )
            )
    return tuple(found)
