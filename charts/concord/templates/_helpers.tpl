{{/* Names and labels shared by every template. */}}

{{- define "concord.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "concord.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The headless Service that gives each member its stable DNS name. */}}
{{- define "concord.peers" -}}
{{- printf "%s-peers" (include "concord.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "concord.tlsSecret" -}}
{{- default (printf "%s-tls" (include "concord.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{- define "concord.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "concord.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "concord.selector" -}}
app.kubernetes.io/name: {{ include "concord.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* A member's DNS name; the argument is (list $ ORDINAL). */}}
{{- define "concord.memberHost" -}}
{{- $ := index . 0 -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "concord.fullname" $) (index . 1) (include "concord.peers" $) $.Release.Namespace $.Values.clusterDomain -}}
{{- end -}}

{{/* ID=HOST:PEER_PORT for the members that create the cluster (ordinal + 1 = Raft id). */}}
{{- define "concord.initialCluster" -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.coordinator.replicas) -}}
{{- $peers = append $peers (printf "%d=%s:%d" (add1 $i) (include "concord.memberHost" (list $ $i)) (int $.Values.coordinator.ports.peer)) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{/* host:CLIENT_PORT of every member: the operator's endpoints. */}}
{{- define "concord.clientEndpoints" -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.coordinator.replicas) -}}
{{- $eps = append $eps (printf "%s:%d" (include "concord.memberHost" (list $ $i)) (int $.Values.coordinator.ports.client)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- end -}}

{{/* host:WORKLOAD_PORT of every member: where injected sidecars dial with their token. One
per member, not the Service: a follower's redirect names the leader's host, and a token
client follows it to its own endpoint on that host (coordinator/client, `_hint`). */}}
{{- define "concord.workloadEndpoints" -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.coordinator.replicas) -}}
{{- $eps = append $eps (printf "%s:%d" (include "concord.memberHost" (list $ $i)) (int $.Values.workloadIdentity.port)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- end -}}

{{/* The MutatingWebhookConfiguration the operator writes its caBundle into. */}}
{{- define "concord.injector" -}}
{{- printf "%s-sidecar-injector" (include "concord.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
