#!/usr/bin/env bash
# Installs gitlab-ci-local 4.65.1 (runs docs/scale.md's .gitlab-ci.yml jobs locally, in shell
# mode, honouring `parallel:`) from the npm registry, once, into a cache outside the clone:
#   ${PLAYBOOK_TEST_CACHE:-$HOME/.cache/playbook-tests}/gitlab-ci-local-4.65.1/node_modules/.bin/gitlab-ci-local
# 4.65.1: 4.75+ fails to start on Node 20 (it needs a newer `Set` API), and 4.66+ no longer
# declares Node 18 (4.70.0 requires node >= 20), while Debian bookworm's nodejs is 18; 4.65.1
# declares node >= 18 and runs this pipeline on Node 20. Idempotent: does nothing when the install is
# present and was made from the same package.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/setup.sh

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
dest="${PLAYBOOK_TEST_CACHE:-$HOME/.cache/playbook-tests}/gitlab-ci-local-4.65.1"
want="$(sha256sum tests/harness/gitlab_ci_local/package.json | cut -c1-16)"
if [ -x "$dest/node_modules/.bin/gitlab-ci-local" ] && [ "$(cat "$dest/.installed" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "== installing gitlab-ci-local 4.65.1 into $dest"
mkdir -p "$dest"
cp tests/harness/gitlab_ci_local/package.json "$dest/package.json"
(cd "$dest" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
"$dest/node_modules/.bin/gitlab-ci-local" --version >/dev/null
echo "$want" > "$dest/.installed"
