{{/* The chart name, or nameOverride. */}}
{{- define "tidewatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names: fullnameOverride, else the release name if it contains the chart name, else RELEASE-NAME. */}}
{{- define "tidewatch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tidewatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "tidewatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The pod selector. */}}
{{- define "tidewatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tidewatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "tidewatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tidewatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where the history is kept in the container. */}}
{{- define "tidewatch.dataDir" -}}
/var/lib/tidewatch
{{- end }}

{{/* The configuration file: the chart's endpoints and data dir, with .Values.config merged over them. */}}
{{- define "tidewatch.config" -}}
{{- $base := dict
  "collector" (dict
    "grpc" (dict "endpoint" (printf "0.0.0.0:%v" .Values.ports.otlpGrpc))
    "http" (dict "endpoint" (printf "0.0.0.0:%v" .Values.ports.otlpHttp)))
  "analyzer" (dict "store" (dict "data_dir" (include "tidewatch.dataDir" .)))
  "web" (dict "endpoint" (printf "0.0.0.0:%v" .Values.ports.http)) }}
{{- if .Values.kafka.enabled }}
{{- $_ := set $base "kafka" (dict
  "brokers" (required "kafka.brokers: name at least one broker" .Values.kafka.brokers)
  "group" .Values.kafka.group
  "checkpoints" .Values.kafka.checkpoints) }}
{{- end }}
{{- toYaml (mustMergeOverwrite $base (deepCopy .Values.config)) }}
{{- end }}
