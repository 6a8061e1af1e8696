{{/*
Name of the chart ("tunerag"), or nameOverride.
*/}}
{{- define "tunerag.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: fullnameOverride, or the release name with "-tunerag"
appended unless the release name already contains it. Truncated to 63 characters (DNS label).
*/}}
{{- define "tunerag.fullname" -}}
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

{{- define "tunerag.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "tunerag.labels" -}}
helm.sh/chart: {{ include "tunerag.chart" . }}
{{ include "tunerag.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tunerag
{{- end }}

{{/*
Labels that select the operator pod (immutable in the Deployment: never add to these).
*/}}
{{- define "tunerag.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tunerag.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tunerag.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tunerag.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository@digest when a digest is set, else repository:tag (tag defaults to
the chart's appVersion).
*/}}
{{- define "tunerag.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "tunerag.workloadsImage" -}}
{{- printf "%s:%s" .Values.workloadsImage.repository (default .Chart.AppVersion .Values.workloadsImage.tag) }}
{{- end }}

{{/*
RBAC rules on namespaced resources: granted cluster-wide by the ClusterRole, or per watched
namespace by a Role. Every rule names what in the operator uses it; tests/chart/test_chart.py holds
the same table and fails when one changes without the other.
*/}}
{{- define "tunerag.namespacedRules" -}}
# The four tunerag.dev kinds: kopf watches them (get/list/watch), patches its progress annotations
# and finalizers (patch/update); the operator creates AdapterVersions from finished FineTuneJobs and
# deletes superseded ones.
- apiGroups: ["tunerag.dev"]
  resources: ["finetunejobs", "adapterversions", "vectorindexes", "rolloutpolicies"]
  verbs: ["get", "list", "watch", "patch", "update", "create", "delete"]
# Status subresources: the handlers write phase, conditions and observedGeneration.
- apiGroups: ["tunerag.dev"]
  resources: ["finetunejobs/status", "adapterversions/status", "vectorindexes/status", "rolloutpolicies/status"]
  verbs: ["get", "patch", "update"]
# Finalizers: kopf adds/removes its finalizer; needed where OwnerReferencesPermissionEnforcement
# checks that the owner of a child object may be finalized (blockOwnerDeletion).
- apiGroups: ["tunerag.dev"]
  resources: ["finetunejobs/finalizers", "adapterversions/finalizers", "vectorindexes/finalizers", "rolloutpolicies/finalizers"]
  verbs: ["update"]
# Training and indexing Jobs that the FineTuneJob and VectorIndex handlers create, watch and clean up.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
# The spec ConfigMaps mounted into workload Jobs (the spec-as-JSON-file contract) and the model
# server's configuration.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# VectorIndex: the PostgreSQL connection Secret is read by name to validate it exists (never listed,
# never copied into status, events or logs).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Workload pods: the termination message (JSON result) of a finished Job's pod.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Workload pod logs, quoted in a failure condition when a Job fails without a termination message.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# kopf posts handler events on the custom resources (core/v1 Events) ...
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
# ... and the same through events.k8s.io/v1, which newer clients use.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# RolloutPolicy: the KServe InferenceService (base model + adapters + retrieval) and the
# InferenceGraph of an A/B test that it creates, adopts, shifts traffic on and deletes.
- apiGroups: ["serving.kserve.io"]
  resources: ["inferenceservices", "inferencegraphs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
{{- end }}

{{/*
Leader election, in the ClusterRole (cluster-wide) or a Role in the release namespace (namespaced).
*/}}
{{- define "tunerag.leaderElectionRules" -}}
# Leader election: the Lease that keeps a single active operator.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}

{{/*
RBAC rules on cluster-scoped resources, always in the ClusterRole.
*/}}
{{- define "tunerag.clusterRules" -}}
# kopf scans CustomResourceDefinitions at start-up to resolve the resources it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
