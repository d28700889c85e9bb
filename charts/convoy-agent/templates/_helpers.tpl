{{/* The chart name. */}}
{{- define "convoy-agent.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A fully qualified name: the release name, unless it already holds the chart name. */}}
{{- define "convoy-agent.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "convoy-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "convoy-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "convoy-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "convoy-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "convoy-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "convoy-agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "convoy-agent.bootstrapSecret" -}}
{{- default (printf "%s-bootstrap" (include "convoy-agent.fullname" .)) .Values.bootstrap.existingSecret -}}
{{- end -}}

{{- define "convoy-agent.trustedKeysConfigMap" -}}
{{- default (printf "%s-trusted-keys" (include "convoy-agent.fullname" .)) .Values.trustedKeysExistingConfigMap -}}
{{- end -}}

{{- define "convoy-agent.hubCaConfigMap" -}}
{{- default (printf "%s-hub-ca" (include "convoy-agent.fullname" .)) .Values.hub.caExistingConfigMap -}}
{{- end -}}

{{/* Cluster labels as k=v,k=v, sorted by key. */}}
{{- define "convoy-agent.labelList" -}}
{{- $out := list -}}
{{- range $k, $v := . -}}
{{- $out = append $out (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}
