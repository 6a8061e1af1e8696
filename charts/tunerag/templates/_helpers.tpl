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
# The tunerag.dev kinds: kopf lists and watches them and patches its progress annotations and
# finalizers (patch); the handlers read a run's owner, a RolloutPolicy's VectorIndex, AdapterVersions
# and a FineTuneSchedule's sources by name (get).
- apiGroups: ["tunerag.dev"]
  resources: ["finetunejobs", "adapterversions", "vectorindexes", "rolloutpolicies", "finetuneschedules"]
  verbs: ["get", "list", "watch", "patch"]
# The registry: a finished FineTuneJob is registered as the next AdapterVersion of its family.
- apiGroups: ["tunerag.dev"]
  resources: ["adapterversions"]
  verbs: ["create"]
# A FineTuneSchedule starts FineTuneJobs and prunes its old ones.
- apiGroups: ["tunerag.dev"]
  resources: ["finetunejobs"]
  verbs: ["create", "delete"]
# Status subresources: the handlers patch phase, conditions and observedGeneration.
- apiGroups: ["tunerag.dev"]
  resources: ["finetunejobs/status", "adapterversions/status", "vectorindexes/status", "rolloutpolicies/status", "finetuneschedules/status"]
  verbs: ["patch"]
# Finalizers: needed where OwnerReferencesPermissionEnforcement checks that the creator of a child
# object with blockOwnerDeletion (the run's Job and ConfigMap) may finalize its owner.
- apiGroups: ["tunerag.dev"]
  resources: ["finetunejobs/finalizers", "adapterversions/finalizers", "vectorindexes/finalizers", "rolloutpolicies/finalizers", "finetuneschedules/finalizers"]
  verbs: ["update"]
# Training, indexing and verification Jobs: created per run, watched (kopf) and read for their
# state, listed to prune refresh runs, deleted when a newer generation replaces an unfinished run.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The spec ConfigMap mounted into each workload Job (the spec-as-JSON-file contract; a
# FineTuneSchedule deletes those of the runs it prunes), and a VectorIndex's ConfigMap source, read
# by name to check that it exists.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "delete"]
# Secrets a spec names (connection, credentials) are read by name to check that they and their key
# exist (never listed, never copied into status, events or logs).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# pvc:// URIs in a spec name a PersistentVolumeClaim: it is read by name to check that it exists
# (the Job mounts it; the operator never lists or changes claims).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
# Workload pods, listed by their Job's label: the termination message (JSON result) of a finished pod.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Workload pod logs: a running training pod's progress records.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# kopf and the handlers post Events on the custom resources (core/v1; kopf never uses
# events.k8s.io and never patches an Event).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# RolloutPolicy: the KServe InferenceService (base model + adapters + retrieval) and the
# InferenceGraph of an A/B test, read by name, created, adopted, shifted (JSON patch) and deleted.
- apiGroups: ["serving.kserve.io"]
  resources: ["inferenceservices", "inferencegraphs"]
  verbs: ["get", "create", "patch", "delete"]
{{- end }}

{{/*
Leader election, in the ClusterRole (cluster-wide) or a Role in the release namespace (namespaced).
*/}}
{{- define "tunerag.peeringRules" -}}
# kopf peering (peering.enabled): the replicas' records in the peering object, which the operator
# creates at start-up if missing; the active replica is the one with the highest priority.
{{- if .Values.peering.enabled }}
- apiGroups: ["kopf.dev"]
  resources: [{{ if .Values.watchNamespaces }}"kopfpeerings"{{ else }}"clusterkopfpeerings"{{ end }}]
  verbs: ["get", "list", "watch", "patch", "create"]
{{- end }}
{{- end }}

{{/*
RBAC rules on cluster-scoped resources, always in the ClusterRole.
*/}}
{{- define "tunerag.clusterRules" -}}
# kopf scans CustomResourceDefinitions at start-up to resolve the resources it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
