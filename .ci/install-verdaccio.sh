#!/usr/bin/env bash
# Installs Verdaccio 6.8.0 (the npm registry the npm_fetch tests publish to) from the npm
# registry, once, into a cache outside the clone:
#   ${PLAYBOOK_TEST_CACHE:-$HOME/.cache/playbook-tests}/verdaccio-6.8.0/node_modules/.bin/verdaccio
# 6.8.0 because 6.9+ needs Node 22; tests/harness/verdaccio/package.json pins node-fetch 2.7.0
# because the registry reachable from CI serves only `latest` dist-tags. Idempotent: does nothing
# when the install is present and was made from the same package.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/setup.sh

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
dest="${PLAYBOOK_TEST_CACHE:-$HOME/.cache/playbook-tests}/verdaccio-6.8.0"
want="$(sha256sum tests/harness/verdaccio/package.json | cut -c1-16)"
if [ -x "$dest/node_modules/.bin/verdaccio" ] && [ "$(cat "$dest/.installed" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "== installing verdaccio 6.8.0 into $dest"
mkdir -p "$dest"
cp tests/harness/verdaccio/package.json "$dest/package.json"
# Debian bookworm's npm 9.2 crashes on the override ("Invalid comparator: cjs", fixed in npm 10):
# there, a newer npm runs through npx for this one install; the system's npm is left alone
npm=(npm)
if [ "$(npm --version | cut -d. -f1)" -lt 10 ]; then npm=(npx --yes npm@10); fi
(cd "$dest" && "${npm[@]}" install --no-audit --no-fund --loglevel=error >/dev/null)
"$dest/node_modules/.bin/verdaccio" --version >/dev/null
echo "$want" > "$dest/.installed"
