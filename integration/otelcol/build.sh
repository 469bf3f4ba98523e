#!/usr/bin/env bash
# Build (or reuse) the OpenTelemetry Collector used by kotel's integration
# tests and CI. The distribution is described by manifest.yaml next to this
# script and compiled from Go modules with the official builder (ocb).
#
# The binary is cached per manifest content:
#   ${KOTEL_CACHE:-$HOME/.cache/kotel}/otelcol-<sha256(manifest)[:12]>/otelcol-kotel
# so a second run is instant, and editing the manifest triggers a rebuild.
#
# All progress goes to stderr; the last line on stdout is the binary path:
#   OTELCOL=$(integration/otelcol/build.sh | tail -n1)
set -euo pipefail

log() { printf '[otelcol-build] %s\n' "$*" >&2; }
die() { printf '[otelcol-build] ERROR: %s\n' "$*" >&2; exit 1; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
manifest="$script_dir/manifest.yaml"
[[ -f "$manifest" ]] || die "manifest not found: $manifest"

dist_name=otelcol-kotel
hash=$(sha256sum "$manifest" | cut -c1-12)
cache_root=${KOTEL_CACHE:-$HOME/.cache/kotel}
out_dir="$cache_root/otelcol-$hash"
bin="$out_dir/$dist_name"

# Fast path: already built for this exact manifest.
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

# The Go toolchain is only needed when we actually have to build.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || die "'go' was not found on PATH. It is needed to build the \
OpenTelemetry Collector for the integration tests: run the Makefile's setup first \
(make setup), or install Go and make sure 'go' is on PATH."

# The builder release must match the collector core modules in the manifest;
# take it from the otlpreceiver line (core "beta" modules share its version).
ocb_version=$(awk '/go\.opentelemetry\.io\/collector\/receiver\/otlpreceiver[[:space:]]/ {print $NF; exit}' "$manifest")
[[ "$ocb_version" =~ ^v0\.[0-9]+\.[0-9]+$ ]] \
  || die "cannot derive the builder version from $manifest (got '${ocb_version}')"

mkdir -p "$cache_root"

# Serialise concurrent builds of the same manifest (parallel test runners).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_root/.otelcol-$hash.lock"
  flock 9
  if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
  fi
fi

log "building $dist_name for manifest $hash ($(go version | awk '{print $3}'))"

ocb_dir="$cache_root/ocb-$ocb_version"
ocb="$ocb_dir/builder"
if [[ ! -x "$ocb" ]]; then
  log "installing go.opentelemetry.io/collector/cmd/builder@$ocb_version into $ocb_dir"
  mkdir -p "$ocb_dir"
  GOBIN="$ocb_dir" go install "go.opentelemetry.io/collector/cmd/builder@$ocb_version" >&2 \
    || die "go install of the collector builder $ocb_version failed"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/otelcol-kotel-build.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# Same manifest, but generate sources and the binary inside the temp dir.
sed -E "s#^([[:space:]]*output_path:).*#\1 $work/dist#" "$manifest" > "$work/manifest.yaml"
grep -q "output_path: $work/dist" "$work/manifest.yaml" \
  || die "manifest.yaml must contain a dist.output_path line (it is rewritten by this script)"

log "running builder (first run downloads many modules and takes several minutes)"
start=$SECONDS
# The builder strips symbols (-ldflags '-s -w') and passes -trimpath by default.
"$ocb" --config "$work/manifest.yaml" >&2 || die "collector builder failed (see output above)"
log "builder finished in $((SECONDS - start))s"

built="$work/dist/$dist_name"
[[ -x "$built" ]] || die "builder did not produce $built"

# Sanity check: the exporters the tests rely on must be compiled in.
components=$("$built" components 2>&1) || die "'$dist_name components' failed: $components"
exporters=$(printf '%s\n' "$components" | awk '
  /^[a-z]+:/ { section = $1 }
  section == "exporters:" && $1 == "-" && $2 == "name:" { print $3 }')
# Newer collectors list some exporters under new type names (otlp_grpc,
# otlp_http, prometheus_remote_write) and keep the old names as aliases;
# accept either spelling.
for want in debug otlp_grpc/otlp otlp_http/otlphttp file prometheus \
            prometheus_remote_write/prometheusremotewrite; do
  found=
  for alt in ${want//\// }; do
    if grep -qx "$alt" <<<"$exporters"; then found=1; break; fi
  done
  [[ -n "$found" ]] \
    || die "built collector lacks the '$want' exporter; it has: $(echo $exporters)"
done
log "exporters present: $(echo $exporters)"

mkdir -p "$out_dir"
cp "$built" "$out_dir/.$dist_name.tmp.$$"
cp "$work/dist/go.mod" "$work/dist/go.sum" "$out_dir/" 2>/dev/null || true
cp "$manifest" "$out_dir/manifest.yaml"
mv -f "$out_dir/.$dist_name.tmp.$$" "$bin"
log "installed $bin ($(du -h "$bin" | cut -f1))"

echo "$bin"
