#!/usr/bin/env bash
# Builds the local stand-ins of the official images the compose file names (for machines that
# reach no container registry) and prints the [images] section that uses them. Images already
# built from the same recipe are kept. Needs root, podman, runc and debootstrap (scripts/setup.sh
# installs them). Options: --synapse VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m synfleet.lab.images "$@"
