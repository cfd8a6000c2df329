#!/usr/bin/env bash
# System packages the embedded stack needs: bubblewrap (local sandboxes) and
# node/npm (configurable-http-proxy, and building the JupyterLab extension); the
# browser tests need Chromium (Playwright drives Debian's, never a downloaded
# one). Installs only what is missing.
set -euo pipefail
missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
# The extension's bundler (rspack) needs Node.js 20.19 or newer: say so plainly
# instead of failing later inside the build.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "Node.js $(node --version) is too old: building the JupyterLab extension needs 20.19 or newer" >&2
  echo "(install a newer Node.js, for example from https://nodejs.org, and run make again)" >&2
  exit 1
fi
