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
app.kubernetes.io/component: operator
{{- end -}}

{{- define "dedicap.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- /* Rules the operator needs where ModelDeployments live: cluster-wide without
watchNamespaces, in a Role of each watched namespace with them. */ -}}
{{- define "dedicap.namespacedRules" -}}
# ModelDeployments: status (the autoscaler's state included) and the replica count (scale).
- apiGroups: [dedicap.dev]
  resources: [modeldeployments/status, modeldeployments/scale]
  verbs: [get, patch, update]
# Owner references with blockOwnerDeletion need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: [dedicap.dev]
  resources: [modeldeployments/finalizers]
  verbs: [update]
# The children of a ModelDeployment (server-side apply creates and patches them; the
# operator's shared cache lists and watches them).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, list, watch, create, patch, delete]
{{- if .Values.capacity.enabled }}
# Capacity: the tenant's GPU quota, and a RoleBinding of dedicap-tenant-view for the tenant's
# service accounts. `bind` names that one ClusterRole: the operator can grant nothing else.
- apiGroups: [""]
  resources: [resourcequotas]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterroles]
  verbs: [bind]
  resourceNames: [dedicap-tenant-view]
{{- end }}
{{- end -}}
