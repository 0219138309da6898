"""Local stand-ins for the official images the compose file names, for machines that reach no
container registry: a Debian base made with debootstrap, and on it one image each for Synapse,
nginx, PostgreSQL and Redis, from Debian packages and PyPI wheels.

Each image keeps what the rendered compose file relies on in the official one (README, "Compose
with podman", lists it). An image is built once and kept in podman's store, labelled with a digest
of its recipe: a changed recipe or Synapse version builds it again.

``python -m synfleet.lab.images [--synapse VERSION]`` builds what is missing and prints the
``[images]`` section that uses them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from synfleet.lab.errors import LabError
from synfleet.lab.podman import Podman
from synfleet.model.schema.images import Images
from synfleet.model.schema.synapse import Synapse

RECIPES = Path(__file__).parent / "containers"
REPOSITORY = "localhost/synfleet-test"
RECIPE_LABEL = "org.synfleet.recipe"
DEBIAN_RELEASE = "bookworm"
#: The Python of Debian bookworm, which the Synapse image runs: the wheels are made for it.
IMAGE_PYTHON = (3, 11)
DEBIAN_MIRROR = os.environ.get("SYNFLEET_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SERVICES = ("synapse", "nginx", "postgres", "redis")


@dataclass(frozen=True)
class Recipe:
    name: str
    tag: str
    digest: str


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:16]


def base_recipe() -> Recipe:
    return Recipe("base", f"{REPOSITORY}/debian:{DEBIAN_RELEASE}", _digest(DEBIAN_RELEASE.encode(), b"minbase"))


def recipe(name: str, base: Recipe, synapse_version: str) -> Recipe:
    files = sorted((RECIPES / name).iterdir())
    parts = [base.digest.encode()] + [f.name.encode() + f.read_bytes() for f in files]
    if name == "synapse":
        parts.append(synapse_version.encode())
        tag = f"{REPOSITORY}/synapse:v{synapse_version}"
    else:
        tag = f"{REPOSITORY}/{name}:{DEBIAN_RELEASE}"
    return Recipe(name, tag, _digest(*parts))


def _current(podman: Podman, wanted: Recipe) -> bool:
    result = podman.run("image", "inspect", "--format", f'{{{{index .Labels "{RECIPE_LABEL}"}}}}', wanted.tag)
    return result.returncode == 0 and result.stdout.strip() == wanted.digest


def _progress(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def _build_base(podman: Podman, base: Recipe, work: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise LabError("building the base image needs debootstrap (apt-get install debootstrap)")
    rootfs = work / "rootfs"
    _progress(f"debootstrap {DEBIAN_RELEASE} from {DEBIAN_MIRROR} (about 30 s)")
    done = subprocess.run(
        ["debootstrap", "--variant=minbase", DEBIAN_RELEASE, str(rootfs), DEBIAN_MIRROR],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise LabError(f"debootstrap failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / leftover).glob("*"):
            if path.is_file():
                path.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = podman.run(
        "import",
        "--change",
        f"LABEL {RECIPE_LABEL}={base.digest}",
        "--change",
        'CMD ["/bin/bash"]',
        "-",
        base.tag,
        stdin=tar.stdout,
    )
    tar.wait()
    if imported.returncode != 0 or tar.returncode != 0:
        raise LabError(f"podman import of the base image failed: {imported.stderr.strip()}")


def _wheels(version: str, into: Path) -> None:
    """Synapse and its dependencies as wheels, made by this machine's pip (which knows this
    machine's proxy and certificates) for the image's Python."""
    if sys.version_info[:2] != IMAGE_PYTHON:
        wanted = ".".join(map(str, IMAGE_PYTHON))
        raise LabError(
            f"the Synapse image runs Debian {DEBIAN_RELEASE}'s Python {wanted}, and its wheels are made "
            f"by the Python running synfleet, which is {sys.version.split()[0]}: run this with Python {wanted}"
        )
    _progress(f"wheels for matrix-synapse {version}")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--wheel-dir",
            str(into),
            f"matrix-synapse[postgres,redis]=={version}",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise LabError(f"pip could not make the wheels for matrix-synapse {version}: {done.stderr.strip()[-500:]}")


def _build(podman: Podman, wanted: Recipe, base: Recipe, version: str, work: Path) -> None:
    context = work / wanted.name
    shutil.copytree(RECIPES / wanted.name, context)
    containerfile = context / "Containerfile"
    text = containerfile.read_text().replace("{base}", base.tag).replace("{synapse_version}", version)
    containerfile.write_text(text)
    if wanted.name == "synapse":
        _wheels(version, context / "wheels")
    _progress(f"building {wanted.tag}")
    done = podman.build("--label", f"{RECIPE_LABEL}={wanted.digest}", "-t", wanted.tag, str(context))
    if done.returncode != 0:
        raise LabError(f"building {wanted.tag} failed: {done.stderr.strip()[-800:]}")


def ensure_images(podman: Podman, synapse_version: str = Synapse().version) -> Images:
    """Build whatever image is missing or out of date; the ``[images]`` that names them."""
    base = base_recipe()
    wanted = {name: recipe(name, base, synapse_version) for name in SERVICES}
    with tempfile.TemporaryDirectory(prefix="synfleet-images-") as tmp:
        work = Path(tmp)
        if not _current(podman, base):
            _build_base(podman, base, work)
        for item in wanted.values():
            if not _current(podman, item):
                _build(podman, item, base, synapse_version, work)
    return Images(**{name: item.tag for name, item in wanted.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synfleet.lab.images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--synapse", default=Synapse().version, help="Synapse release for the Synapse image")
    args = parser.parse_args(argv)
    try:
        images = ensure_images(Podman.for_this_machine(), args.synapse)
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("[images]")
    for name in SERVICES:
        print(f'{name} = "{getattr(images, name)}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
