#!/usr/bin/env bash
# Refresh the stock socket.io-client browser bundle that the demo page loads.
#
#   scripts/vendor-socketio.sh            # re-fetch the pinned version
#   scripts/vendor-socketio.sh 4.8.5      # move the pin to another 4.x version
#
# Takes the published npm tarball (npm checks its integrity against the registry),
# copies dist/socket.io.min.js and LICENSE into static/vendor/, and records version and
# sha256 in static/vendor/socket.io-client.VERSION so a review can see what changed.
# Keep the version in step with tests/js/package.json (the Node reference client).
set -euo pipefail

version="${1:-4.8.4}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "socket.io-client@$version" >/dev/null)
tar -xzf "$work"/socket.io-client-*.tgz -C "$work"
mkdir -p "$dest"
cp "$work/package/dist/socket.io.min.js" "$dest/socket.io.min.js"
cp "$work/package/LICENSE" "$dest/socket.io-client.LICENSE"
{
  echo "socket.io-client $version (npm, dist/socket.io.min.js)"
  echo "sha256 $(sha256sum "$dest/socket.io.min.js" | cut -d' ' -f1)  socket.io.min.js"
  echo "refresh: scripts/vendor-socketio.sh [VERSION]"
} > "$dest/socket.io-client.VERSION"
echo "vendored socket.io-client $version into $dest"
