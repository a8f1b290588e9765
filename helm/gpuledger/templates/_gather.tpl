{{- /* The gatherer's pod spec: the CronJob's (a run at a time) or, with gather.every, the Deployment's. */ -}}
{{- define "gpuledger.gatherPod" -}}
{{- $gather := .Values.gather -}}
restartPolicy: {{ if $gather.every }}Always{{ else }}Never{{ end }}
serviceAccountName: {{ printf "%s-gather" (include "gpuledger.fullname" .) }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  runAsUser: 65532
  runAsGroup: 65532
  runAsNonRoot: true
  # makes the claim writable for that group
  fsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
containers:
  - name: gather
    image: {{ include "gpuledger.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args:
      - gather
      - --kubernetes
      - --namespace={{ .Release.Namespace }}
      - --selector=app.kubernetes.io/name={{ include "gpuledger.name" . }},app.kubernetes.io/instance={{ .Release.Name }},app.kubernetes.io/component=agent
      - --port={{ .Values.metrics.port }}
      - --out={{ $gather.out }}
      {{- with $gather.s3Endpoint }}
      - --s3-endpoint={{ . }}
      {{- end }}
      {{- with .Values.ledger.token.secretName }}
      - --token-file=/etc/gpuledger-ledger-token/{{ $.Values.ledger.token.key }}
      {{- end }}
      {{- with $gather.every }}
      - --every={{ . }}
      - --listen=0.0.0.0:{{ $gather.metricsPort }}
      {{- end }}
      {{- range $gather.extraArgs }}
      - {{ . | quote }}
      {{- end }}
    {{- with $gather.extraEnv }}
    env:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- if $gather.every }}
    ports:
      - name: metrics
        containerPort: {{ $gather.metricsPort }}
    readinessProbe:
      httpGet:
        path: /healthz
        port: metrics
    livenessProbe:
      httpGet:
        path: /healthz
        port: metrics
      periodSeconds: 30
    {{- end }}
    resources:
      {{- toYaml $gather.resources | nindent 6 }}
    securityContext:
      allowPrivilegeEscalation: false
      capabilities:
        drop: [ALL]
      readOnlyRootFilesystem: true
    volumeMounts:
      - name: dataset
        mountPath: /dataset
      - name: tmp
        mountPath: /tmp
      {{- if .Values.ledger.token.secretName }}
      - name: ledger-token
        mountPath: /etc/gpuledger-ledger-token
        readOnly: true
      {{- end }}
volumes:
  - name: dataset
    {{- if $gather.existingClaim }}
    persistentVolumeClaim:
      claimName: {{ $gather.existingClaim }}
    {{- else }}
    emptyDir: {}
    {{- end }}
  - name: tmp
    emptyDir: {}
  {{- with .Values.ledger.token.secretName }}
  - name: ledger-token
    secret:
      secretName: {{ . }}
      defaultMode: 0440
  {{- end }}
{{- end }}
