#!/usr/bin/env bash
# Installs what synfleet needs on a Debian or Ubuntu machine: nginx, PostgreSQL, Redis and coturn from the
# distribution (and for the tests iproute2 and dnsmasq for the multi-host lab, podman, runc and
# debootstrap for the compose run, Prometheus's binaries for the metrics test), and synfleet with
# Synapse in a virtualenv at .venv (with the test, development and bench tools). Safe to run again.
#
# --runtime-only: only what a fleet needs to run (nginx, PostgreSQL, Redis, coturn, synfleet with Synapse),
# none of the test, development and bench tools.
set -euo pipefail
cd "$(dirname "$0")/.."

runtime_only=false
for argument in "$@"; do
    case $argument in
        --runtime-only) runtime_only=true ;;
        -h | --help)
            echo "usage: scripts/setup.sh [--runtime-only]"
            exit 0
            ;;
        *)
            echo "setup: error: unknown option $argument (usage: scripts/setup.sh [--runtime-only])" >&2
            exit 2
            ;;
    esac
done

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
# nginx's stream module carries the TLS links between the hosts of a fleet on several.
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v turnserver >/dev/null || [ -x /usr/bin/turnserver ] || missing+=(coturn)
if ! $runtime_only; then
    command -v ip >/dev/null || [ -x /usr/sbin/ip ] || missing+=(iproute2)
    command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
    command -v systemd-analyze >/dev/null || missing+=(systemd)  # checks `synfleet service` units
    # The compose test: podman with runc, and debootstrap for its locally built images.
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || [ -x /usr/sbin/runc ] || missing+=(runc)
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q "${missing[@]}"
fi
# The fleet runs coturn itself ([turn]); Debian's package enables a system-wide one on port 3478
# under systemd (its /etc/default/coturn switch covers only the SysV script).
if command -v systemctl >/dev/null && systemctl is-enabled --quiet coturn 2>/dev/null; then
    echo "setup: disabling the system-wide coturn service (synfleet runs its own)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo systemctl disable coturn  # works without a running systemd too (an image built for later boots)
    [ ! -d /run/systemd/system ] || $sudo systemctl stop coturn
fi

# Run as root, synfleet runs Synapse as an unprivileged account, which must be able to run the
# virtualenv's Python. So the Python it is made from must be one every user can run (one under
# /root is not), and a clone that other users cannot reach gets its virtualenv in /var/lib/synfleet,
# linked from .venv.
runs_for_others() {
    [ "$(id -u)" -ne 0 ] || runuser -u nobody -- "$1" -c '' 2>/dev/null
}
if [ -e .venv ] && ! runs_for_others .venv/bin/python; then
    echo "setup: .venv's Python cannot be run by other users; making it again"
    rm -rf "$(readlink -f .venv)" .venv
fi
if [ ! -x .venv/bin/python ]; then
    python=${PYTHON:-$(command -v python3)}
    if ! runs_for_others "$python"; then
        for candidate in /usr/bin/python3 /usr/local/bin/python3; do
            if [ -x "$candidate" ] && runs_for_others "$candidate"; then
                python=$candidate
                break
            fi
        done
    fi
    venv=.venv
    if [ "$(id -u)" -eq 0 ] && ! runuser -u nobody -- test -r "$PWD/pyproject.toml" 2>/dev/null; then
        venv=/var/lib/synfleet/venv-$(printf %s "$PWD" | sha256sum | cut -c1-12)
        mkdir -p "$venv"
        chmod 755 /var/lib/synfleet
        ln -sfn "$venv" .venv
    fi
    echo "setup: creating $venv with $python"
    "$python" -m venv "$venv"
    if ! runs_for_others .venv/bin/python; then
        echo "setup: error: no Python here can be run by other users; set PYTHON to one that can" >&2
        exit 1
    fi
fi
.venv/bin/python -m pip install -q --upgrade pip
if $runtime_only; then
    echo "setup: installing synfleet and Synapse into .venv"
    .venv/bin/python -m pip install -q -e '.[synapse]'
    echo "setup: done (.venv/bin/synfleet; without the test tools)"
    exit 0
fi
echo "setup: installing synfleet, Synapse and test tools into .venv"
.venv/bin/python -m pip install -q -e '.[synapse,test,dev,bench]'
# Prometheus, for the metrics test: the binaries of Debian's package unpacked into the virtualenv.
# Installing the package would start a system-wide Prometheus on port 9090.
if [ ! -x .venv/bin/prometheus ]; then
    echo "setup: unpacking Debian's prometheus into .venv/bin"
    scratch=$(mktemp -d)
    chmod 755 "$scratch"  # apt's download sandbox writes here
    if ! (cd "$scratch" && apt-get download -q prometheus >/dev/null 2>&1); then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -q
        (cd "$scratch" && apt-get download -q prometheus >/dev/null)
    fi
    dpkg-deb -x "$scratch"/prometheus_*.deb "$scratch/root"
    cp "$scratch/root/usr/bin/prometheus" "$scratch/root/usr/bin/promtool" .venv/bin/
    rm -rf "$scratch"
fi
# --- checkov, for the Kubernetes manifests' test: a virtualenv of its own, since it pins versions of
# packages Synapse needs too.
checkov_version=3.3.30
if ! .venv-checkov/bin/checkov --version 2>/dev/null | grep -qx "$checkov_version"; then
    echo "setup: installing checkov $checkov_version into .venv-checkov"
    .venv/bin/python -m venv --clear .venv-checkov
    .venv-checkov/bin/python -m pip install -q "checkov==$checkov_version"
fi
# --- end of checkov
echo "setup: done (.venv/bin/synfleet)"
