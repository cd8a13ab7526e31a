{{- define "dedicap.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dedicap.labels" -}}
app.kubernetes.io/name: dedicap
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dedicap.selectorLabels" -}}
app.kubernetes.io/name: dedicap
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
