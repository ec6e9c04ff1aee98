#!/usr/bin/env bash
# Copies the CRDs from crds/ into the Helm chart, which cannot read files outside its own directory.
#
#   hack/sync-chart-crds.sh          copy crds/*.yaml to charts/apus-crds/files/crds/ (and drop stale copies)
#   hack/sync-chart-crds.sh --check  change nothing; exit 1 and name the files when the chart is out of date
#
# crds/kustomization.yaml is not a CRD and is not copied.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source_dir="$root/crds"
chart_dir="$root/charts/apus-crds/files/crds"

mode=sync
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

crd_files() {
    find "$1" -maxdepth 1 -type f -name '*.yaml' ! -name kustomization.yaml -exec basename {} \; | LC_ALL=C sort
}

mkdir -p "$chart_dir"
problems=()
while IFS= read -r name; do
    if ! cmp -s "$source_dir/$name" "$chart_dir/$name"; then
        if [[ $mode == check ]]; then
            problems+=("charts/apus-crds/files/crds/$name differs from crds/$name")
        else
            cp "$source_dir/$name" "$chart_dir/$name"
            echo "synced $name"
        fi
    fi
done < <(crd_files "$source_dir")

while IFS= read -r name; do
    if [[ ! -f "$source_dir/$name" ]]; then
        if [[ $mode == check ]]; then
            problems+=("charts/apus-crds/files/crds/$name has no source in crds/")
        else
            rm "$chart_dir/$name"
            echo "removed stale $name"
        fi
    fi
done < <(crd_files "$chart_dir")

if ((${#problems[@]} > 0)); then
    printf 'error: %s\n' "${problems[@]}" >&2
    echo "error: the Helm chart's CRDs are out of date; run hack/sync-chart-crds.sh" >&2
    exit 1
fi
