{{- define "litecluster-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "litecluster-operator.selectorLabels" -}}
app.kubernetes.io/name: litecluster-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "litecluster-operator.labels" -}}
{{ include "litecluster-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "litecluster-operator.serviceAccountName" -}}
{{- default (include "litecluster-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}
