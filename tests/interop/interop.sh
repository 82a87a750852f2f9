#!/usr/bin/env bash
# interop.sh - run the openid-client interoperability test (interop.mjs) as one suite of
# tests/run.sh, which provides the database. Skips with a message and a zero exit when
# Node.js is missing or older than openid-client 6 needs. Installs the pinned packages
# from package-lock.json when node_modules is missing, and fails if that install fails.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)

if ! command -v node >/dev/null 2>&1; then
    echo "interop test skipped: Node.js not found"
    echo "0 passed, 0 failed"
    exit 0
fi
# openid-client 6 takes Node.js 20 as its baseline (global fetch and WebCrypto). Debian
# 12's own nodejs is 18, so deploy/install-deps.sh does not install it.
version=$(node -p 'process.versions.node' 2>/dev/null)
major=${version%%.*}
if [[ ! $major =~ ^[0-9]+$ ]] || ((major < 20)); then
    echo "interop test skipped: Node.js ${version:-?} is older than 20"
    echo "0 passed, 0 failed"
    exit 0
fi

if [[ ! -d $here/node_modules/openid-client ]]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "interop test failed: Node.js is present but npm is not, so the pinned" \
             "packages cannot be installed" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
    if ! (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) >&2; then
        echo "interop test failed: npm ci in tests/interop failed (is the npm registry" \
             "reachable?)" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
fi

exec node "$here/interop.mjs"
