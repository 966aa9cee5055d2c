{{/* Names, labels and the values several templates share. */}}

{{- define "qwen-chat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qwen-chat.fullname" -}}
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

{{- define "qwen-chat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qwen-chat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen-chat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "qwen-chat.labels" -}}
helm.sh/chart: {{ include "qwen-chat.chart" . }}
{{ include "qwen-chat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "qwen-chat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "qwen-chat.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "qwen-chat.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret with one file per user, mounted read-only at the credentials directory. */}}
{{- define "qwen-chat.credentialsSecret" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-credentials" (include "qwen-chat.fullname" .) }}
{{- end }}
{{- end }}

{{- define "qwen-chat.credentialsDir" -}}/etc/qwen-chat/credentials{{- end }}

{{/* The name clients and dashboards see: servedName, else the model id (as Settings.model_name does). */}}
{{- define "qwen-chat.modelName" -}}
{{- default .Values.model.name .Values.model.servedName }}
{{- end }}

{{/* The endpoint picker's Service: the value, else the one `helm install <release>-router` of llm-d's router
chart creates (it names it after its release, lowercased and cut to 40 characters, plus `-epp`). */}}
{{- define "qwen-chat.endpointPicker" -}}
{{- .Values.inferencePool.endpointPicker.service | default (printf "%s-epp" (printf "%s-router" .Release.Name | lower | trunc 40 | trimSuffix "-")) }}
{{- end }}
