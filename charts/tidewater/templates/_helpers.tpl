{{- define "tidewater.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "tidewater.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "tidewater.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}
{{- define "tidewater.labels" -}}
app.kubernetes.io/name: tidewater-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "tidewater.selector" -}}
app.kubernetes.io/name: tidewater-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
