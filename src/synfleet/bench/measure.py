"""Figures of a running fleet: PostgreSQL transactions and rows, and Synapse's cache hit counters from each
process's Prometheus listener."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx


def postgres_transactions(socket_dir: str, user: str, password: str, database: str) -> int:
    import psycopg2

    connection = psycopg2.connect(host=socket_dir, dbname=database, user=user, password=password)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (database,))
            row = cursor.fetchone()
            return int(row[0]) if row else 0
    finally:
        connection.close()


#: The counters of ``pg_stat_database`` that say how much work a load gave PostgreSQL: transactions,
#: and rows read (returned by scans, fetched by index lookups) and written.
POSTGRES_ACTIVITY = (
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
)


def postgres_activity(socket_dir: str, user: str, password: str, database: str) -> dict[str, int]:
    """The database's :data:`POSTGRES_ACTIVITY` counters now (backends report them at the end of
    a transaction, at most about once a second)."""
    import psycopg2

    connection = psycopg2.connect(host=socket_dir, dbname=database, user=user, password=password)
    try:
        with connection.cursor() as cursor:
            columns = ", ".join(POSTGRES_ACTIVITY)
            cursor.execute(f"SELECT {columns} FROM pg_stat_database WHERE datname = %s", (database,))
            row = cursor.fetchone() or (0,) * len(POSTGRES_ACTIVITY)
            return {name: int(value) for name, value in zip(POSTGRES_ACTIVITY, row, strict=True)}
    finally:
        connection.close()


_SAMPLE = re.compile(r"^(synapse_util_caches_cache_hits|synapse_util_caches_cache)\{[^}]*\} ([0-9.e+]+)$", re.M)


@dataclass(frozen=True)
class CacheCounters:
    hits: float
    lookups: float


def cache_counters(port: int) -> CacheCounters:
    """Sum of Synapse's cache hits and lookups over all caches of one process."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/_synapse/metrics", timeout=10).text
    except httpx.HTTPError:
        return CacheCounters(0, 0)
    hits = lookups = 0.0
    for name, value in _SAMPLE.findall(text):
        if name.endswith("_hits"):
            hits += float(value)
        else:
            lookups += float(value)
    return CacheCounters(hits, lookups)


#: PostgreSQL's statistics of each statement, loaded into a profiled fleet's own server.
STATEMENTS_EXTENSION = "pg_stat_statements"


@dataclass(frozen=True)
class Statement:
    """What one normalised statement cost so far: times run, milliseconds executing, rows."""

    query: str
    calls: int
    exec_ms: float
    rows: int


def postgres_statements(socket_dir: str, user: str, password: str, database: str) -> dict[int, Statement]:
    """Every statement ``pg_stat_statements`` has counted in ``database`` for ``user``, by query id."""
    import psycopg2

    connection = psycopg2.connect(host=socket_dir, dbname=database, user=user, password=password)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT queryid, query, calls, total_exec_time, rows FROM pg_stat_statements s"
                " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s AND s.queryid IS NOT NULL",
                (database,),
            )
            return {int(q): Statement(text, int(calls), float(ms), int(rows)) for q, text, calls, ms, rows in cursor}
    finally:
        connection.close()


def statements_between(before: dict[int, Statement], after: dict[int, Statement]) -> list[Statement]:
    """What each statement cost between two readings, the costliest (execution time) first."""
    spent = []
    for query_id, now in after.items():
        then = before.get(query_id, Statement(now.query, 0, 0.0, 0))
        if now.calls > then.calls:
            spent.append(Statement(now.query, now.calls - then.calls, now.exec_ms - then.exec_ms, now.rows - then.rows))
    return sorted(spent, key=lambda statement: -statement.exec_ms)
