{{/*
Labels for every object of this chart.
*/}}
{{- define "apus-crds.labels" -}}
app.kubernetes.io/part-of: apus
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/*
Renders one CRD from files/crds/ with the chart's labels and the keep policy added.
Expects a dict with "root" (the top-level context) and "path" (the file inside the chart).
*/}}
{{- define "apus-crds.crd" -}}
{{- $crd := .root.Files.Get .path | fromYaml -}}
{{- if hasKey $crd "Error" -}}
{{- fail (printf "%s is not valid YAML: %s" .path (get $crd "Error")) -}}
{{- end -}}
{{- $metadata := $crd.metadata -}}
{{- $labels := merge (include "apus-crds.labels" .root | fromYaml) (default (dict) $metadata.labels) -}}
{{- $_ := set $metadata "labels" $labels -}}
{{- /* keep: uninstalling the chart must not delete the CRDs, which would delete every ServiceProfile and route. */ -}}
{{- $annotations := merge (dict "helm.sh/resource-policy" "keep") (default (dict) $metadata.annotations) -}}
{{- $_ := set $metadata "annotations" $annotations -}}
{{- toYaml $crd -}}
{{- end -}}
