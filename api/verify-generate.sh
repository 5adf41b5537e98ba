#!/usr/bin/env bash
# verify-generate.sh regenerates the protobuf/gRPC code into a temporary
# directory and fails if it differs from the committed *.pb.go files under
# api/ (including generated files that are missing or left over).
#
# The "protoc vX.Y.Z" line in the generated headers is ignored, so a
# different (but compatible) protoc release does not count as stale.
set -euo pipefail

API_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if ! out="$("$API_DIR/generate.sh" "$TMP/gen" 2>&1)"; then
  echo "$out" >&2
  echo "verify-generate.sh: regeneration failed" >&2
  exit 1
fi

# normalize FILE prints FILE without the protoc version header line.
normalize() { grep -Ev '^// (-|	)? *protoc +v[0-9]' "$1" || true; }

list() { (cd "$1" && find . -name '*.pb.go' -not -path './google/*' | LC_ALL=C sort); }

stale=0
if ! diff -u --label committed --label regenerated <(list "$API_DIR") <(list "$TMP/gen") >"$TMP/files.diff"; then
  echo "generated files differ (- committed, + regenerated):" >&2
  cat "$TMP/files.diff" >&2
  stale=1
fi
while read -r f; do
  [[ -f "$API_DIR/$f" ]] || continue
  if ! diff -u --label "committed/${f#./}" --label "regenerated/${f#./}" \
      <(normalize "$API_DIR/$f") <(normalize "$TMP/gen/$f") >&2; then
    stale=1
  fi
done < <(list "$TMP/gen")

if [[ $stale -ne 0 ]]; then
  echo >&2
  echo "generated code is stale: run make generate" >&2
  exit 1
fi
echo "generated code is up to date"
