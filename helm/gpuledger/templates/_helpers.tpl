{{/* The chart name, or nameOverride. */}}
{{- define "gpuledger.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The object name prefix: <release>-gpuledger, or the release name when it holds the chart name. */}}
{{- define "gpuledger.fullname" -}}
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

{{- define "gpuledger.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "gpuledger.labels" -}}
helm.sh/chart: {{ include "gpuledger.chart" . }}
app.kubernetes.io/name: {{ include "gpuledger.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of the agent's pods (the DaemonSet's, or the dry-run Deployment's). */}}
{{- define "gpuledger.agentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "gpuledger.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "gpuledger.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gpuledger.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gpuledger.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end }}

{{/* Whether the config ConfigMap (config.yaml, rates.yaml) is rendered. */}}
{{- define "gpuledger.hasConfigMap" -}}
{{- if or .Values.config .Values.rateCard }}true{{ end }}
{{- end }}

{{/* The job label of the agents' scrape targets. */}}
{{- define "gpuledger.job" -}}
{{- default (include "gpuledger.fullname" .) .Values.prometheusRule.job }}
{{- end }}

{{/* A money amount as PromQL and prose read it: 50000, or 1234.50 (never 5e+04). */}}
{{- define "gpuledger.amount" -}}
{{- if eq (floor .) (float64 .) }}{{ int64 . }}{{ else }}{{ printf "%.2f" (float64 .) }}{{ end }}
{{- end }}

{{/* The pod spec of the agent, live (DaemonSet) or dry-run (Deployment). */}}
{{- define "gpuledger.agentPodSpec" -}}
{{- $agent := .Values.agent -}}
{{- $dry := .Values.dryRun.enabled -}}
{{- $hasConfig := include "gpuledger.hasConfigMap" . -}}
{{- $uid := ternary 65532 (int $agent.runAsUser) $dry -}}
serviceAccountName: {{ include "gpuledger.serviceAccountName" . }}
automountServiceAccountToken: {{ not $dry }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if not $dry }}
{{- if $agent.processes }}
# With --processes on the agent reads /proc/<pid>/cgroup of the GPU processes of other pods.
hostPID: true
{{- end }}
{{- with $agent.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with $agent.priorityClassName }}
# docs/helm.md, "Priority": evicted last, scheduled even on a full node
priorityClassName: {{ . }}
{{- end }}
affinity:
  {{- if $agent.affinity }}
  {{- toYaml $agent.affinity | nindent 2 }}
  {{- else }}
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        {{- toYaml $agent.gpuNodeSelectorTerms | nindent 8 }}
  {{- end }}
{{- with $agent.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $agent.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
terminationGracePeriodSeconds: {{ $agent.terminationGracePeriodSeconds }}
securityContext:
  runAsUser: {{ $uid }}
  runAsGroup: {{ $uid }}
  runAsNonRoot: {{ ne $uid 0 }}
  seccompProfile:
    type: RuntimeDefault
containers:
  - name: agent
    image: {{ include "gpuledger.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args:
      - agent
      {{- if $dry }}
      - --dry-run
      - --trace=/trace/{{ .Values.dryRun.traceKey }}
      - --speed={{ .Values.dryRun.speed }}
      {{- end }}
      - --listen=0.0.0.0:{{ .Values.metrics.port }}
      - --account-every={{ $agent.accountEvery }}
      {{- if not $dry }}
      - --node=$(NODE_NAME)
      - --interval={{ $agent.interval }}
      {{- end }}
      - --ledger-dir=/var/lib/gpuledger/ledger
      {{- if not $dry }}
      - --kubernetes={{ $agent.kubernetes }}
      {{- if ne $agent.kubernetes "off" }}
      - --kubelet-socket={{ $agent.kubeletSocketDir }}/kubelet.sock
      {{- end }}
      - --processes={{ ternary "on" "off" $agent.processes }}
      - --serving={{ $agent.serving.mode }}
      - --serving-interval={{ $agent.serving.interval }}
      {{- with $agent.serving.ports }}
      - --serving-ports={{ join "," . }}
      {{- end }}
      - --price-cache=/var/lib/gpuledger/price-cache
      - --price-refresh={{ .Values.pricing.refresh }}
      {{- if .Values.pricing.aws }}
      - --aws
      {{- end }}
      {{- if .Values.pricing.gcp }}
      - --gcp
      {{- end }}
      {{- if .Values.pricing.azure }}
      - --azure
      {{- end }}
      {{- end }}
      {{- if .Values.config }}
      - --config=/etc/gpuledger/config.yaml
      {{- end }}
      {{- if .Values.rateCard }}
      - --rates=/etc/gpuledger/rates.yaml
      {{- end }}
      - --ledger-keep-days={{ .Values.ledger.keepDays }}
      {{- with .Values.ledger.token.secretName }}
      - --ledger-token-file=/etc/gpuledger-ledger-token/{{ $.Values.ledger.token.key }}
      {{- end }}
      - --log-level={{ $agent.logLevel }}
      {{- range $agent.extraArgs }}
      - {{ . | quote }}
      {{- end }}
    env:
      - name: NODE_NAME
        valueFrom:
          fieldRef:
            fieldPath: spec.nodeName
      {{- if not $dry }}
      - name: NVIDIA_VISIBLE_DEVICES
        value: {{ $agent.nvidiaVisibleDevices | quote }}
      - name: NVIDIA_DRIVER_CAPABILITIES
        value: {{ $agent.nvidiaDriverCapabilities | quote }}
      {{- end }}
      {{- with $agent.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    ports:
      - name: metrics
        containerPort: {{ .Values.metrics.port }}
        protocol: TCP
    livenessProbe:
      httpGet:
        path: /healthz
        port: metrics
      initialDelaySeconds: 10
      periodSeconds: 10
      timeoutSeconds: 5
      failureThreshold: 3
    readinessProbe:
      httpGet:
        path: /readyz
        port: metrics
      initialDelaySeconds: 5
      periodSeconds: 10
      timeoutSeconds: 5
      failureThreshold: 3
    resources:
      {{- toYaml $agent.resources | nindent 6 }}
    securityContext:
      {{- if and $agent.privileged (not $dry) }}
      # agent.privileged: the GPU device nodes are not given to containers otherwise.
      privileged: true
      {{- else }}
      allowPrivilegeEscalation: false
      capabilities:
        drop: [ALL]
      {{- end }}
      readOnlyRootFilesystem: true
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      - name: data
        mountPath: /var/lib/gpuledger
      {{- if $dry }}
      - name: trace
        mountPath: /trace
        readOnly: true
      {{- else if ne $agent.kubernetes "off" }}
      - name: pod-resources
        mountPath: {{ $agent.kubeletSocketDir }}
        # read-only is enough: connecting to a unix socket is not a write to the mount
        readOnly: true
      {{- end }}
      {{- if $hasConfig }}
      - name: config
        mountPath: /etc/gpuledger
        readOnly: true
      {{- end }}
      {{- if .Values.ledger.token.secretName }}
      - name: ledger-token
        mountPath: /etc/gpuledger-ledger-token
        readOnly: true
      {{- end }}
      {{- with $agent.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 64Mi
  {{- if $dry }}
  - name: data
    emptyDir:
      sizeLimit: 256Mi
  - name: trace
    configMap:
      name: {{ default (printf "%s-trace" (include "gpuledger.fullname" .)) .Values.dryRun.existingConfigMap }}
  {{- else }}
  - name: data
    hostPath:
      path: {{ $agent.hostDataDir }}
      type: DirectoryOrCreate
  {{- if ne $agent.kubernetes "off" }}
  - name: pod-resources
    hostPath:
      path: {{ $agent.kubeletSocketDir }}
      {{- if eq $agent.kubernetes "on" }}
      # kubernetes: on insists on the kubelet: no pod on a node without its directory
      type: Directory
      {{- else }}
      # kubernetes: auto: a node without it still gets an agent (an empty directory, no
      # socket in it: the agent attributes its GPUs without pods and says so)
      type: DirectoryOrCreate
      {{- end }}
  {{- end }}
  {{- end }}
  {{- if $hasConfig }}
  - name: config
    configMap:
      name: {{ include "gpuledger.fullname" . }}-config
  {{- end }}
  {{- with .Values.ledger.token.secretName }}
  - name: ledger-token
    secret:
      secretName: {{ . }}
      defaultMode: 0444  # the dry-run agent runs as 65532, with no fsGroup
  {{- end }}
  {{- with $agent.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Annotations of the agent's pods: a checksum of the config (a change rolls the pods), scrape hints. */}}
{{- define "gpuledger.agentPodAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if .Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .Values.agent.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
