#!/usr/bin/env bash
# test.sh: run cnm's whole test suite, privileged tier included, isolated from this machine's
# own network. Run it as root from the repository's root:
#
#   ./scripts/test.sh                 # go test -race ./... with CNM_PRIVILEGED_TESTS=1 and CNM_GOSSIP_LARGE=1
#   ./scripts/test.sh -run Seed ./    # extra arguments go to `go test` (default ./...)
#   ./scripts/test.sh -C interop      # the tests of another module of the repository (interop/)
#
# Before that it finds etcd and Consul (scripts/services.sh installs etcd-server and builds
# Consul on the first run; both need the network) and exports CNM_ETCD_BIN and CNM_CONSUL_BIN.
#
# It re-executes itself in a new network and mount namespace: loopback up, and private tmpfs
# mounts on /run/netns, /run/cnm and /var/lib/cnm, so nothing a test does (links, routes,
# iptables, namespaces) can reach the machine, and all of it vanishes when the script exits.
# Modules are downloaded before entering the namespace, which has no network.
set -euo pipefail
cd "$(dirname "$0")/.."
module=.
if [ "${1:-}" = "-C" ]; then
  module="${2:?test.sh: -C needs a module directory}"
  shift 2
  [ -f "$module/go.mod" ] || { echo "test.sh: $module has no go.mod" >&2; exit 2; }
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the privileged tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN); run it as root" >&2
  exit 2
fi
for tool in unshare nsenter ip ping iptables-restore go; do
  command -v "$tool" >/dev/null || { echo "test.sh: $tool is missing (Debian: apt-get install iproute2 iputils-ping util-linux iptables)" >&2; exit 2; }
done

if [ -z "${CNM_TEST_ISOLATED:-}" ]; then
  # Tools some tests run (the cnmd multi-host walk-through types iperf3, openssl and curl),
  # installed from Debian while there is a network; a package's service is kept from starting.
  missing=()
  for pair in iperf3:iperf3 openssl:openssl curl:curl; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || { echo "test.sh: missing ${missing[*]}; install them" >&2; exit 2; }
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
    fi
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
  fi
  go mod download
  go build ./... >/dev/null
  if [ "$module" != . ]; then
    # Its modules, and the tools its tests build (go.mod's tool lines), are fetched here.
    (cd "$module" && go mod download && go build ./... >/dev/null && go build -o /dev/null tool)
  fi
  # etcd (Debian's etcd-server) and Consul (built once from the module proxy, cached) for the
  # store tests; the tests start their own servers on the namespace's loopback.
  eval "$(./scripts/services.sh)"
  export CNM_ETCD_BIN CNM_CONSUL_BIN
  export CNM_TEST_ISOLATED=1
  exec unshare --net --mount --propagation private -- "$0" -C "$module" "$@"
fi

# Inside the throwaway namespace.
for d in /run/netns /run/cnm /var/lib/cnm; do
  mkdir -p "$d"
  mount -t tmpfs cnm-test "$d"
done
ip link set lo up

export CNM_PRIVILEGED_TESTS=1
# The gossip cluster tests at 30 nodes too, not only 3 and 10 (issue 6).
export CNM_GOSSIP_LARGE="${CNM_GOSSIP_LARGE:-1}"
export GOFLAGS="${GOFLAGS:-} -mod=mod"
[ $# -gt 0 ] || set -- ./...
cd "$module"
echo "test.sh: go test -race -count=1 -timeout 15m $*"
go test -race -count=1 -timeout 15m "$@"
