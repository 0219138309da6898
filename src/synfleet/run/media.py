"""Media in a bucket (``media.store = "s3"``): the media store's disk is a cache, and
:func:`offload` moves files from it to the bucket.

Synapse writes every upload to the media store and to the bucket before it acknowledges it (see
:func:`synfleet.render.synapse.media_storage`), and reads a file back from the bucket when the
disk no longer has it. :func:`offload` removes a file from the disk only once the bucket holds it
whole (an object of the same size under the same key; uploaded first if missing, and checked
again after), so nothing is lost whatever stops it. It takes the files last changed before a given
age, and then, to bring the disk under a size, the least recently used first.

It reads the bucket's settings from the rendered Synapse config of the process that runs the media
repository on this host: the one place they are written. Run as root, it works as the fleet's
account (in a forked child that becomes it), with that account's rights alone.
"""

from __future__ import annotations

import argparse
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from synfleet.errors import SynfleetError, UsageError
from synfleet.layout import SHARED_CONFIG, WORKER_CONFIG_DIR
from synfleet.model.schema import FleetSpec
from synfleet.render.synapse import S3_PROVIDER
from synfleet.run.accounts import FLEET_ACCOUNT, as_root, lookup, run_as
from synfleet.run.paths import RunPaths

#: The media store's directories Synapse writes files in, relative to it (and so in the bucket).
MEDIA_DIRECTORIES = ("local_content", "local_thumbnails", "remote_content", "remote_thumbnail", "url_cache")
#: Files listed for one progress line.
PROGRESS_EVERY = 50
#: Seconds between two rounds of the native run's ``media_cache`` process.
CACHE_ROUND = 300.0
#: That process's name.
MEDIA_CACHE = "media_cache"

Report = Callable[[str], None]


@dataclass(frozen=True)
class Stored:
    """A file of the media store: its path relative to the store (the bucket's key, after the
    prefix), size, and when it was last changed and last read."""

    relative: str
    size: int
    changed: float
    used: float


def media_store(paths: RunPaths) -> Path:
    return Path(paths.layout.media_store)


def stored_files(store: Path) -> Iterator[Stored]:
    """Every regular file under the media directories of ``store`` (links are not followed)."""
    for directory in MEDIA_DIRECTORIES:
        for root, _, files in os.walk(store / directory, followlinks=False):
            for name in files:
                path = Path(root) / name
                found = os.lstat(path)
                if stat.S_ISREG(found.st_mode):
                    yield Stored(str(path.relative_to(store)), found.st_size, found.st_mtime, found.st_atime)


def bucket_settings(config_dir: Path) -> dict[str, Any]:
    """The S3 storage provider's settings in the rendered config of this host's media process."""
    candidates = [*sorted((config_dir / WORKER_CONFIG_DIR).glob("*.yaml")), config_dir / SHARED_CONFIG]
    for path in candidates:
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except OSError:
            continue
        for provider in config.get("media_storage_providers") or []:
            if provider.get("module") == S3_PROVIDER:
                return dict(provider["config"])
    raise UsageError(f"no process in {config_dir} keeps media in a bucket: is this host's share running?")


def _client(settings: dict[str, Any]) -> Any:
    """A client of the bucket's store, as Synapse's storage provider makes it."""
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {
        "endpoint_url": settings.get("endpoint_url"),
        "region_name": settings.get("region_name"),
        "aws_access_key_id": settings.get("access_key_id"),
        "aws_secret_access_key": settings.get("secret_access_key"),
    }
    checksums = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", config=checksums, **{k: v for k, v in options.items() if v})


def _held(client: Any, bucket: str, key: str) -> int | None:
    """The size of the object at ``key``, None if there is none."""
    from botocore.exceptions import ClientError

    try:
        return int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def choose(files: list[Stored], older_than: float | None, keep: int | None, now: float) -> list[Stored]:
    """The files to move: those changed before ``older_than`` seconds ago, then, while the rest
    exceed ``keep`` bytes, the least recently used."""
    chosen = [f for f in files if older_than is not None and f.changed < now - older_than]
    if keep is not None:
        left = sorted((f for f in files if f not in chosen), key=lambda f: f.used)
        total = sum(f.size for f in left)
        for file in left:
            if total <= keep:
                break
            chosen.append(file)
            total -= file.size
    return chosen


def _move(
    store: Path, settings: dict[str, Any], older_than: float | None, keep: int | None, report: Report
) -> list[str]:
    """Offload in this process (already the fleet's account when run as root): the counts."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = settings["bucket"], settings.get("prefix", "")
    client = _client(settings)
    files = list(stored_files(store))
    chosen = choose(files, older_than, keep, time.time())
    report(f"{len(files)} files on disk ({_mib(sum(f.size for f in files))}); moving {len(chosen)} to {bucket}")
    moved = uploaded = freed = 0
    for number, file in enumerate(chosen, 1):
        path, key = store / file.relative, prefix + file.relative
        try:
            if _held(client, bucket, key) != file.size:
                client.upload_file(str(path), bucket, key)
                uploaded += 1
                if _held(client, bucket, key) != file.size:
                    raise SynfleetError(f"{bucket}/{key}: the bucket does not hold the whole file; kept on disk")
        except (BotoCoreError, ClientError) as error:
            raise SynfleetError(
                f"{bucket}: {error}; {moved} files moved so far, the rest kept on disk (run it again)"
            ) from None
        now = os.lstat(path)
        if now.st_size == file.size and now.st_mtime == file.changed:  # unchanged since it was listed
            path.unlink()
            moved, freed = moved + 1, freed + file.size
        if number % PROGRESS_EVERY == 0 or number == len(chosen):
            report(f"  {number}/{len(chosen)}: {moved} moved ({uploaded} uploaded, the rest already there)")
    return [str(moved), str(uploaded), str(freed)]


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


@dataclass(frozen=True)
class Offloaded:
    moved: int
    uploaded: int
    freed: int

    def line(self) -> str:
        return (
            f"moved {self.moved} files to the bucket ({self.uploaded} uploaded, the rest already there); "
            f"{_mib(self.freed)} freed on disk"
        )


def offload(paths: RunPaths, spec: FleetSpec, older_than: float | None, keep: int | None, report: Report) -> Offloaded:
    """Move this host's media files to the bucket: those changed more than ``older_than`` seconds
    ago, and the least recently used until the disk holds at most ``keep`` bytes."""
    if not spec.media.in_bucket:
        raise UsageError('media offload moves media to a bucket: set media.store = "s3" (and s3_bucket) first')
    if spec.hosts and not any(w.host == paths.host for w in spec.fleet.media_repository):
        raise UsageError(f"host {paths.host} runs no media process: run it on the host of a media worker")
    store = media_store(paths)
    if not store.is_dir():
        raise UsageError(f"{store}: no media store here; `synfleet up` makes it")
    settings = bucket_settings(paths.config)
    account = lookup(FLEET_ACCOUNT) if as_root() else None
    moved, uploaded, freed = run_as(account, lambda: _move(store, settings, older_than, keep, report))
    return Offloaded(int(moved), int(uploaded), int(freed))


def keep_bounded(config_dir: Path, store: Path, keep: int, every: float, report: Report) -> None:
    """Every ``every`` seconds, bring the media store's disk under ``keep`` bytes (the native run's
    ``media_cache`` process, as the fleet's account). A round that fails is reported, and the next
    one tries again: nothing leaves the disk that the bucket does not hold."""
    while True:
        try:
            total = sum(f.size for f in stored_files(store))
            if total > keep:
                moved, _, freed = _move(store, bucket_settings(config_dir), None, keep, report)
                report(f"cache: moved {moved} files to the bucket, {_mib(int(freed))} freed")
        except (SynfleetError, OSError) as error:
            report(f"cache: {error}")
        time.sleep(every)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="synfleet.run.media", description=keep_bounded.__doc__)
    parser.add_argument("--config", type=Path, required=True, help="the run directory's Synapse config")
    parser.add_argument("--store", type=Path, required=True, help="the media store")
    parser.add_argument("--keep", type=int, required=True, help="bytes the disk may hold")
    parser.add_argument("--every", type=float, default=CACHE_ROUND)
    options = parser.parse_args(argv)
    keep_bounded(options.config, options.store, options.keep, options.every, lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
