#!/usr/bin/env bash
# generate.sh regenerates the Go code for every .proto file under api/
# (used by `make generate`). It first installs whatever is missing:
#   - protoc (apt-get install protobuf-compiler) if it is not on PATH;
#   - protoc-gen-go and protoc-gen-go-grpc at the pinned versions below if
#     they are absent or report a different version.
#
# Usage: api/generate.sh [OUT_DIR]
#   OUT_DIR defaults to the api/ directory itself, so the generated
#   *.pb.go files land beside their .proto files. verify-generate.sh passes a
#   temporary directory instead.
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12     # keep in step with google.golang.org/protobuf in go.mod
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

API_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT_DIR="${1:-$API_DIR}"

log() { echo "generate.sh: $*" >&2; }

# Tools installed by `go install` land in GOBIN (or GOPATH/bin); make sure
# they are found, and found before any other copies.
GOBIN_DIR="$(go env GOBIN)"
if [[ -z "$GOBIN_DIR" ]]; then
  GOBIN_DIR="$(go env GOPATH | cut -d: -f1)/bin"
fi
export PATH="$GOBIN_DIR:$PATH"

ensure_protoc() {
  if command -v protoc >/dev/null 2>&1; then
    return
  fi
  log "protoc not found; installing protobuf-compiler with apt-get"
  local sudo=()
  if [[ $EUID -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  fi
  if ! "${sudo[@]}" apt-get install -y protobuf-compiler; then
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y protobuf-compiler
  fi
  command -v protoc >/dev/null 2>&1 || { log "protoc still not found after install"; exit 1; }
}

# ensure_plugin BINARY MODULE/PATH VERSION installs BINARY at VERSION unless
# `BINARY --version` already reports it (with or without the leading "v").
ensure_plugin() {
  local bin=$1 pkg=$2 version=$3 have=""
  if command -v "$bin" >/dev/null 2>&1; then
    have="$("$bin" --version 2>/dev/null | awk '{print $NF}')"
  fi
  if [[ "v${have#v}" == "$version" ]]; then
    return
  fi
  log "installing $pkg@$version (found: ${have:-none})"
  GOBIN="$GOBIN_DIR" go install "$pkg@$version"
}

ensure_protoc
ensure_plugin protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
ensure_plugin protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"

# Well-known types (google/protobuf/*.proto) ship with the protobuf-compiler
# package in /usr/include; PROTOC_INCLUDE overrides.
WKT_INCLUDE="${PROTOC_INCLUDE:-/usr/include}"
if [[ ! -f "$WKT_INCLUDE/google/protobuf/timestamp.proto" ]]; then
  log "google/protobuf/timestamp.proto not found under $WKT_INCLUDE; set PROTOC_INCLUDE"
  exit 1
fi

cd "$API_DIR"
mapfile -t PROTOS < <(find . -name '*.proto' -not -path './google/*' | sed 's|^\./||' | LC_ALL=C sort)
if [[ ${#PROTOS[@]} -eq 0 ]]; then
  log "no .proto files under $API_DIR"
  exit 1
fi

mkdir -p "$OUT_DIR"
protoc -I "$API_DIR" -I "$WKT_INCLUDE" \
  --go_out="$OUT_DIR" --go_opt=paths=source_relative \
  --go-grpc_out="$OUT_DIR" --go-grpc_opt=paths=source_relative \
  "${PROTOS[@]}"
log "generated ${PROTOS[*]} -> $OUT_DIR"
