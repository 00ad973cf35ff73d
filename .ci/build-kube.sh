#!/usr/bin/env bash
# Builds a real kube-apiserver and kube-controller-manager v1.20.2 from Debian bookworm's
# `kubernetes` source package, for the canary tests (tests/harness/kube.py). Idempotent: does
# nothing when the binaries are already in the cache. The cache lives outside the clone:
#   ${PLAYBOOK_TEST_CACHE:-$HOME/.cache/playbook-tests}/kube-1.20.2/bin
# No registry we can reach ships these binaries; the source package plus Debian's golang-go does.
# The system's apt sources are left alone: a private deb-src list and private state dirs are used.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/setup.sh

cache="${PLAYBOOK_TEST_CACHE:-$HOME/.cache/playbook-tests}/kube-1.20.2"
bin="$cache/bin"
apt_install etcd-server
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ]; then
  exit 0
fi
apt_install golang-go dpkg-dev ca-certificates rsync make

work="$cache/work"
aptdir="$work/apt"
mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$bin"
# the deb-src line mirrors this machine's own configured Debian archive (the first `deb` URI whose
# suites include bookworm, from sources.list or deb822 .sources files)
# (either kind may be absent: a debootstrapped system has only sources.list, so no status of
# these lookups may stop the script)
uri=$( { grep -hE '^deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
           | awk '$3 == "bookworm" {print $2; exit}' || true
         for f in /etc/apt/sources.list.d/*.sources; do
           [ -f "$f" ] || continue
           awk 'BEGIN{RS=""} /Types:[^\n]*deb/ && /Suites:[^\n]*bookworm( |\n|$)/ {
               for (i = 1; i <= NF; i++) if ($i == "URIs:") {print $(i+1); exit}}' "$f"
         done; } | head -n 1) || true
[ -n "$uri" ] || { echo "no Debian bookworm archive configured in /etc/apt (needed for the kubernetes source package)" >&2; exit 1; }
echo "deb-src $uri bookworm main" > "$aptdir/sources.list"
aptopts=(-o "Dir::Etc::SourceList=$aptdir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
         -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache=$aptdir/cache"
         -o "APT::Sandbox::User=root")

cd "$work"
if ! ls kubernetes_*.dsc >/dev/null 2>&1; then
  echo "== fetching Debian's kubernetes source package"
  apt-get "${aptopts[@]}" -qq update
  apt-get "${aptopts[@]}" -qq source --download-only kubernetes
fi
if [ ! -d src/.pc ] && [ ! -f src/Makefile ]; then
  rm -rf src
  dpkg-source -x kubernetes_*.dsc src >/dev/null
fi

echo "== building kube-apiserver and kube-controller-manager (several minutes, ~1.4 GB RAM)"
cd src
# As debian/rules: a GOPATH whose k8s.io/kubernetes is this tree, cgo off, Debian's Go.
export GOPATH="$PWD/.go" CGO_ENABLED=0 PATH="/usr/lib/go/bin:$PATH"
export GOCACHE="$work/gocache"
mkdir -p .go/src/k8s.io
[ -L .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
env HOME="$work/home" make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
install -m 0755 _output/bin/kube-apiserver _output/bin/kube-controller-manager "$bin/"
cd "$cache"
rm -rf "$work"   # 2.2 GB of sources and Go build cache; only the two binaries are kept
echo "== kube binaries in $bin"
