"""Synapse back end: homeserver.yaml (shared by every process), one yaml per worker, log configs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from synfleet.layout import FEDERATION_CA, SHARED_CONFIG, Layout, log_config_file, worker_config_file
from synfleet.model.fleet import Role, Service, Stream, Worker, host_port
from synfleet.model.pem import trusted_ca
from synfleet.model.schema import FleetSpec
from synfleet.model.schema.turn import public_address
from synfleet.model.synapse import WORKER_MODULE, Resource, instance_name
from synfleet.pki.fleet import Installed
from synfleet.render.secrets import Secret

# Per-user limits that interactive tests and load generators exceed within seconds.
RELAXED_RATE_LIMITS: dict[str, Any] = {
    "rc_message": {"per_second": 1000, "burst_count": 1000},
    "rc_login": {
        "address": {"per_second": 1000, "burst_count": 1000},
        "account": {"per_second": 1000, "burst_count": 1000},
        "failed_attempts": {"per_second": 1000, "burst_count": 1000},
    },
    "rc_registration": {"per_second": 1000, "burst_count": 1000},
    "rc_joins": {
        "local": {"per_second": 1000, "burst_count": 1000},
        "remote": {"per_second": 1000, "burst_count": 1000},
    },
    "rc_invites": {
        "per_room": {"per_second": 1000, "burst_count": 1000},
        "per_user": {"per_second": 1000, "burst_count": 1000},
    },
    "rc_presence": {"per_user": {"per_second": 1000, "burst_count": 1000}},
    "rc_delayed_event_mgmt": {"per_second": 1000, "burst_count": 1000},
    "rc_joins_per_room": {"per_second": 1000, "burst_count": 1000},
    "rc_room_creation": {"per_second": 1000, "burst_count": 1000},
    "rc_media_create": {"per_second": 1000, "burst_count": 1000},
    "rc_key_requests": {"per_second": 1000, "burst_count": 1000},
    "rc_profile": {"per_second": 1000, "burst_count": 1000},
}


def dump(data: dict[str, Any]) -> str:
    text: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return "# Rendered by synfleet from fleet.toml; edit that file and re-render.\n" + text


def inbound_resources(worker: Worker) -> list[str]:
    """Media workers serve the media resource too (with its admin API)."""
    if worker.role is Role.MEDIA:
        resources = [Resource.MEDIA, Resource.CLIENT, Resource.FEDERATION]
    else:
        resources = [Resource.CLIENT, Resource.FEDERATION] if worker.serves_http else [Resource.HEALTH]
    return [resource.value for resource in resources]


def _inbound_at(worker: Worker, layout: Layout) -> dict[str, Any]:
    if layout.tcp:
        return {"port": layout.tcp.inbound_port, "bind_addresses": list(layout.tcp.bind)}
    return {"path": layout.inbound_socket(worker.name), "mode": layout.inbound_socket_mode}


def _replication_at(worker: Worker, layout: Layout) -> dict[str, Any]:
    if layout.tcp:
        return {"port": layout.tcp.replication_port, "bind_addresses": list(layout.tcp.bind)}
    return {"path": layout.replication_socket(worker.name), "mode": layout.replication_socket_mode}


def listeners(worker: Worker, layout: Layout) -> list[dict[str, Any]]:
    """The inbound socket or port (requests from nginx; only /health for workers nginx never routes
    to), for instance_map members the replication socket or port, and the metrics port if enabled.
    x_forwarded is explicit: Synapse's default is off on TCP."""
    result: list[dict[str, Any]] = [
        {
            **_inbound_at(worker, layout),
            "type": "http",
            "x_forwarded": True,
            "resources": [{"names": inbound_resources(worker), "compress": False}],
        }
    ]
    if worker.in_instance_map:
        result.append(
            {**_replication_at(worker, layout), "type": "http", "resources": [{"names": [Resource.REPLICATION.value]}]}
        )
    if worker.metrics_port is not None:
        result.append({"type": "metrics", "port": worker.metrics_port, "bind_addresses": [layout.metrics_bind]})
    return result


def _names(workers: tuple[Worker, ...]) -> list[str]:
    return [instance_name(w.name) for w in workers]


def _elsewhere(spec: FleetSpec, host: str, process: str) -> str | None:
    """The private address of ``process``'s host when it is not ``host`` (links to it cross hosts)."""
    placed = spec.fleet.process(process)
    return None if not host or placed.host == host else placed.address


def _instance(spec: FleetSpec, layout: Layout, host: str, worker: Worker) -> dict[str, Any]:
    """Where other processes reach ``worker``'s replication listener: its socket on this host, this
    host's nginx relay to it from another (see :mod:`synfleet.render.hosts`); its host name when
    processes are linked by TCP."""
    if layout.tcp:
        return {"host": layout.tcp.hosts[worker.name], "port": layout.tcp.replication_port}
    if _elsewhere(spec, host, worker.name):
        return {"path": layout.replication_relay(worker.name)}
    return {"path": layout.replication_socket(worker.name)}


def homeserver_config(spec: FleetSpec, layout: Layout, secrets: dict[str, str], host: str = "") -> dict[str, Any]:
    """The shared configuration every process loads first; main takes all of its config from it.
    In a fleet on several hosts, the one of ``host``: other hosts' processes, PostgreSQL and Redis
    at their private addresses."""
    fleet = spec.fleet
    media = fleet.with_role(Role.MEDIA)
    tasks = fleet.with_role(Role.TASKS)
    config: dict[str, Any] = {
        "server_name": spec.server_name,
        "public_baseurl": spec.baseurl,
        "pid_file": f"{layout.data_dir}/homeserver.pid",
        "report_stats": False,
        "signing_key_path": layout.secret(Secret.SIGNING_KEY),
        "macaroon_secret_key_path": layout.secret(Secret.MACAROON_SECRET_KEY),
        "form_secret_path": layout.secret(Secret.FORM_SECRET),
        "registration_shared_secret_path": layout.secret(Secret.REGISTRATION_SHARED_SECRET),
        "worker_replication_secret_path": layout.secret(Secret.WORKER_REPLICATION_SECRET),
        "media_store_path": layout.media_store,
        "max_upload_size": spec.media.max_upload_bytes,
        "log_config": layout.log_config(fleet.main.name),
        "listeners": listeners(fleet.main, layout),
        "database": database_config(spec, layout, secrets, host),
        "redis": redis_config(spec, layout, host),
        "instance_map": {w.name: _instance(spec, layout, host, w) for w in fleet.workers if w.in_instance_map},
        "stream_writers": {stream.value: _names(fleet.writers(stream)) for stream in Stream if fleet.writers(stream)},
        "enable_media_repo": not media,
        "enable_registration": False,
        "trusted_key_servers": [{"server_name": name} for name in spec.federation.trusted_key_servers],
        "suppress_key_server_warning": True,
    }
    federation = spec.federation
    if federation.trusted_ca:
        config["federation_custom_ca_list"] = [f"{layout.config_dir}/{FEDERATION_CA}"]
    if federation.domain_whitelist is not None:
        config["federation_domain_whitelist"] = list(federation.domain_whitelist)
    if federation.ip_range_whitelist:
        config["ip_range_whitelist"] = list(federation.ip_range_whitelist)
    if media:
        config["media_instance_running_background_jobs"] = media[0].name
    if senders := fleet.with_role(Role.SENDER):
        config["federation_sender_instances"] = _names(senders)
    if pushers := tuple(w for w in fleet.workers if w.pusher):
        config["pusher_instances"] = _names(pushers)
    background = [w for w in fleet.workers if w.background_tasks]
    if background:
        config["run_background_tasks_on"] = background[0].name
    if tasks:
        config["update_user_directory_from_worker"] = tasks[0].name
        config["notify_appservices_from_worker"] = tasks[0].name
    if spec.synapse.relaxed_rate_limits:
        config.update(RELAXED_RATE_LIMITS)
    if spec.metrics.enabled:
        config["enable_metrics"] = True
    if spec.synapse.gc_thresholds:
        config["gc_thresholds"] = list(spec.synapse.gc_thresholds)
    if spec.turn.enabled:
        config.update(turn_config(spec, layout))
    return config


def turn_config(spec: FleetSpec, layout: Layout) -> dict[str, Any]:
    """What Synapse needs to hand out TURN credentials (GET /_matrix/client/v3/voip/turnServer):
    coturn's URIs, UDP first (what calls prefer), and the secret both sign them with."""
    at = host_port(public_address(spec), spec.turn.port)
    return {
        "turn_uris": [f"turn:{at}?transport=udp", f"turn:{at}?transport=tcp"],
        "turn_shared_secret_path": layout.secret(Secret.TURN_SHARED_SECRET),
        "turn_user_lifetime": spec.turn.user_lifetime,
        "turn_allow_guests": spec.turn.allow_guests,
    }


def database_config(spec: FleetSpec, layout: Layout, secrets: dict[str, str], host: str = "") -> dict[str, Any]:
    db = spec.database
    address = _elsewhere(spec, host, Service.POSTGRES) if db.local else db.host
    args: dict[str, Any] = {
        "user": db.user,
        "password": secrets[Secret.POSTGRES_PASSWORD],
        "dbname": db.name,
        "host": address or layout.socket_dir,
        "cp_min": db.pool_min,
        "cp_max": db.pool_max,
    }
    if not layout.database_password_inline:
        del args["password"]  # libpq reads PGPASSWORD from the process's environment
    if address:
        args["port"] = db.port
    if address and db.local:  # the fleet's own, on another host: TLS, both ends by the fleet's CA
        args.update(
            sslmode="verify-full",
            sslrootcert=layout.secret(Installed.TRUST.certificate),
            sslcert=layout.secret(Installed.DATABASE.certificate),
            sslkey=layout.secret(Installed.DATABASE.key),
        )
    return {"name": "psycopg2", "args": args}


def redis_config(spec: FleetSpec, layout: Layout, host: str = "") -> dict[str, Any]:
    """Redis: the fleet's own on its socket, or through this host's nginx relay to it from another
    host (then with a password, on the socket too), or an external one."""
    if not spec.redis.local:
        return {"enabled": True, "host": spec.redis.host, "port": spec.redis.port, "dbid": spec.redis.dbid}
    config: dict[str, Any] = {"enabled": True, "dbid": spec.redis.dbid}
    config["path"] = layout.redis_relay if _elsewhere(spec, host, Service.REDIS) else layout.redis_socket
    if spec.hosts:
        config["password_path"] = layout.secret(Secret.REDIS_PASSWORD)
    return config


def worker_config(worker: Worker, layout: Layout, storage: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One worker's own file, loaded after homeserver.yaml (top-level keys replace shared ones); a
    media worker's with the media ``storage`` providers."""
    media = worker.role is Role.MEDIA
    config: dict[str, Any] = {
        "worker_app": WORKER_MODULE,
        "worker_name": worker.name,
        "worker_log_config": layout.log_config(worker.name),
        "worker_listeners": listeners(worker, layout),
        # Only media workers load the media repository, even when main has none.
        "enable_media_repo": media,
    }
    if media and storage:
        config["media_storage_providers"] = storage
    return config


#: The storage provider Synapse loads for media in a bucket (PyPI's synapse-s3-storage-provider).
S3_PROVIDER = "s3_storage_provider.S3StorageProviderBackend"


def media_storage(spec: FleetSpec, secrets: Mapping[str, str]) -> list[dict[str, Any]]:
    """``media_storage_providers`` of the processes that run the media repository: with media in a
    bucket, every file is written there before its upload is acknowledged (``store_synchronous``:
    a bucket that refuses it fails the upload, and nothing is recorded), and read back from there
    when the media store's disk no longer has it (see :mod:`synfleet.run.media`)."""
    media = spec.media
    if not media.in_bucket:
        return []
    config = {
        "bucket": media.s3_bucket,
        "prefix": media.s3_prefix,
        "access_key_id": secrets.get(Secret.S3_ACCESS_KEY_ID, ""),
        "secret_access_key": secrets.get(Secret.S3_SECRET_ACCESS_KEY, ""),
    }
    if media.s3_endpoint:
        config["endpoint_url"] = media.s3_endpoint
    if media.s3_region:
        config["region_name"] = media.s3_region
    return [
        {"module": S3_PROVIDER, "store_local": True, "store_remote": True, "store_synchronous": True, "config": config}
    ]


def log_config(name: str, layout: Layout, level: str = "INFO") -> dict[str, Any]:
    """Python logging for one process: to a file in the native run, to the console in containers."""
    handler: dict[str, Any]
    if layout.log_dir:
        handler = {
            "class": "logging.handlers.WatchedFileHandler",
            "formatter": "precise",
            "filename": layout.log_file(name),
            "encoding": "utf8",
        }
    else:
        handler = {"class": "logging.StreamHandler", "formatter": "precise"}
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": f"%(asctime)s - {name} - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"
            }
        },
        "handlers": {"out": {**handler, "filters": ["context"]}},
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}},
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}, "twisted": {"level": "WARNING"}},
        "root": {"level": level, "handlers": ["out"]},
        "disable_existing_loggers": False,
    }


def render_synapse(spec: FleetSpec, layout: Layout, secrets: dict[str, str], host: str = "") -> dict[str, str]:
    """Every Synapse file by path relative to the config directory; with ``host``, those of the
    processes on that host of a fleet on several hosts."""
    fleet = spec.fleet
    shared = homeserver_config(spec, layout, secrets, host)
    storage = media_storage(spec, secrets)
    if storage and fleet.main in fleet.media_repository:
        shared["media_storage_providers"] = storage
    files = {SHARED_CONFIG: dump(shared)}
    if (bundle := trusted_ca(spec)) is not None:
        files[FEDERATION_CA] = bundle
    for worker in fleet.workers:
        if host and worker.host != host:
            continue
        if worker.role is not Role.MAIN:
            files[worker_config_file(worker.name)] = dump(worker_config(worker, layout, storage))
        files[log_config_file(worker.name)] = dump(log_config(worker.name, layout, spec.synapse.log_level))
    return files
