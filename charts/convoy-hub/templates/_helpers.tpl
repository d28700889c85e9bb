{{/* The chart name. */}}
{{- define "convoy-hub.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A fully qualified name: the release name, unless it already holds the chart name. */}}
{{- define "convoy-hub.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "convoy-hub.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "convoy-hub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "convoy-hub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "convoy-hub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "convoy-hub.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "convoy-hub.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "convoy-hub.fleetConfigMap" -}}
{{- default (printf "%s-fleet" (include "convoy-hub.fullname" .)) .Values.fleet.existingConfigMap -}}
{{- end -}}

{{/* Refuse values that cannot work, before anything is rendered. */}}
{{- define "convoy-hub.validate" -}}
{{- if eq .Values.mode "ha" -}}
{{- if not .Values.store.etcd.endpoints }}{{ fail "mode ha needs store.etcd.endpoints: replicas share their state in etcd" }}{{ end -}}
{{- if not .Values.ca.existingSecret }}{{ fail "mode ha needs ca.existingSecret: every replica must issue certificates from the same CA" }}{{ end -}}
{{- if not .Values.signing.existingSecret }}{{ fail "mode ha needs signing.existingSecret: every replica must sign with the same key" }}{{ end -}}
{{- end -}}
{{- end -}}

{{/* The HubConfig document. */}}
{{- define "convoy-hub.config" -}}
{{- $spec := dict
  "dataDir" "/var/lib/convoy"
  "grpc" (dict "listen" (printf "0.0.0.0:%d" (int .Values.hub.grpcPort)) "serverNames" (concat (list (printf "%s.%s.svc" (include "convoy-hub.fullname" .) .Release.Namespace) (printf "%s.%s.svc.cluster.local" (include "convoy-hub.fullname" .) .Release.Namespace)) .Values.hub.serverNames))
  "http" (dict "listen" (printf "0.0.0.0:%d" (int .Values.hub.httpPort)))
  "metrics" (dict "listen" (printf "0.0.0.0:%d" (int .Values.hub.metricsPort)))
  "fleet" (dict "paths" (list "/etc/convoy/fleet"))
-}}
{{- if .Values.ca.existingSecret -}}
{{- $_ := set $spec "tls" (dict "caCertFile" "/etc/convoy/ca/tls.crt" "caKeyFile" "/etc/convoy/ca/tls.key") -}}
{{- end -}}
{{- if .Values.signing.existingSecret -}}
{{- $_ := set $spec "signing" (dict "keyFile" "/etc/convoy/signing/signing.key") -}}
{{- end -}}
{{- if .Values.adminToken.existingSecret -}}
{{- $_ := set $spec "admin" (dict "tokenFile" "/etc/convoy/admin/token") -}}
{{- end -}}
{{- if eq .Values.mode "ha" -}}
{{- $store := dict "type" "etcd" "endpoints" .Values.store.etcd.endpoints "prefix" .Values.store.etcd.prefix "advertise" (printf "https://${POD_IP}:%d" (int .Values.hub.grpcPort)) -}}
{{- if .Values.store.etcd.tlsSecret -}}
{{- $_ := set $store "tls" (dict "ca" "/etc/convoy/etcd/ca.crt" "cert" "/etc/convoy/etcd/tls.crt" "key" "/etc/convoy/etcd/tls.key") -}}
{{- end -}}
{{- $_ := set $spec "store" $store -}}
{{- end -}}
{{- $spec = mergeOverwrite $spec (deepCopy .Values.hub.extraConfig) -}}
{{- dict "apiVersion" "convoy.dev/v1" "kind" "HubConfig" "spec" $spec | toYaml -}}
{{- end -}}
