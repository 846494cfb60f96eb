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

{{/* The client Service's names, one a line ("- NAME"): every member certifies them, since
clients dial the Service and reach whichever member it picks. */}}
{{- define "concord.clientServiceNames" -}}
{{- $fullname := include "concord.fullname" . -}}
- {{ printf "%s.%s.svc.%s" $fullname .Release.Namespace .Values.clusterDomain }}
- {{ printf "%s.%s.svc" $fullname .Release.Namespace }}
- {{ printf "%s.%s" $fullname .Release.Namespace }}
- {{ $fullname }}
{{- end -}}

{{/* The members' --cluster-id under cert-manager (the CA bootstrap keeps its own in its
Secret): stable across upgrades because it is derived, not drawn. */}}
{{- define "concord.clusterId" -}}
{{- default (printf "%s-%s" .Release.Namespace (include "concord.fullname" .)) .Values.tls.certManager.clusterId -}}
{{- end -}}

{{/* What every certificate of the cluster shares under cert-manager; the argument is
(list $ ISSUER_REF). EC P-256 in PKCS#8, as `concordctl cluster init` issues them. */}}
{{- define "concord.certificateCommon" -}}
{{- $ := index . 0 -}}
{{- $cm := $.Values.tls.certManager -}}
duration: {{ $cm.duration }}
renewBefore: {{ $cm.renewBefore }}
privateKey:
  algorithm: ECDSA
  size: 256
  encoding: PKCS8
  # A renewal brings a new key: the old one is worthless once the members have restarted.
  rotationPolicy: Always
issuerRef:
  {{- toYaml (index . 1) | nindent 2 }}
{{- end -}}
