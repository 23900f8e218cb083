#!/usr/bin/env bash
# services.sh: find or install the servers the store tests run against, and print their paths
# as shell assignments (CNM_ETCD_BIN=..., CNM_CONSUL_BIN=...).
#
#   eval "$(./scripts/services.sh)"
#
# etcd comes from Debian's etcd-server package (3.4). Debian has no Consul package: Consul
# v1.14.11 is built once from the Go module proxy and cached under ${XDG_CACHE_HOME:-~/.cache}/cnm.
# Its go.mod replaces three sub-modules with folders the module zip lacks, so the replaces are
# dropped and the served versions used. The build takes a few minutes on two cores.
# This needs the network (apt, the module proxy); run it before entering a test namespace.
set -euo pipefail
export PATH="/usr/local/go/bin:$PATH"

consul_version=v1.14.11
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cnm"
mkdir -p "$cache"

etcd_bin="${CNM_ETCD_BIN:-$(command -v etcd || true)}"
if [ -z "$etcd_bin" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    # The tests start their own servers: keep the package from starting one on the host.
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
    fi
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
    [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
    systemctl disable --now etcd >/dev/null 2>&1 || true
    etcd_bin="$(command -v etcd)"
  else
    echo "services.sh: etcd not found; install Debian's etcd-server or set CNM_ETCD_BIN" >&2
    exit 2
  fi
fi

consul_bin="${CNM_CONSUL_BIN:-$cache/consul-$consul_version}"
if [ ! -x "$consul_bin" ]; then
  echo "services.sh: building Consul $consul_version into $consul_bin (a few minutes)" >&2
  go mod download "github.com/hashicorp/consul@$consul_version" >&2
  src="$(go env GOMODCACHE)/github.com/hashicorp/consul@$consul_version"
  work="$(mktemp -d)"
  trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
  cp -r "$src" "$work/consul"
  chmod -R u+w "$work/consul"
  (
    cd "$work/consul"
    go mod edit -dropreplace github.com/hashicorp/consul/api \
      -dropreplace github.com/hashicorp/consul/sdk \
      -dropreplace github.com/hashicorp/consul/proto-public
    GOFLAGS=-mod=mod GOWORK=off go build -o "$consul_bin.tmp" . >&2
  )
  mv "$consul_bin.tmp" "$consul_bin"
fi

echo "CNM_ETCD_BIN=$etcd_bin"
echo "CNM_CONSUL_BIN=$consul_bin"
