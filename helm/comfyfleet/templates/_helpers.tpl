{{/* Chart name, overridable with nameOverride. */}}
{{- define "comfyfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name; truncated to 63 characters because some Kubernetes name fields are
limited to this (by the DNS naming spec). Component names are appended to it, so it is cut at 50.
*/}}
{{- define "comfyfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "comfyfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "comfyfleet.labels" -}}
helm.sh/chart: {{ include "comfyfleet.chart" . }}
app.kubernetes.io/name: {{ include "comfyfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: comfyfleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "api"). */}}
{{- define "comfyfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "comfyfleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects: (dict "ctx" $ "component" "api"). */}}
{{- define "comfyfleet.componentLabels" -}}
{{ include "comfyfleet.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The comfyfleet app image (one image; the command picks api/worker/operator). */}}
{{- define "comfyfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "comfyfleet.serviceAccountName" -}}
{{- printf "%s-%s" (include "comfyfleet.fullname" .ctx) .component }}
{{- end }}

{{/* ---------- Redis ---------- */}}

{{- define "comfyfleet.redis.fullname" -}}
{{- printf "%s-redis" (include "comfyfleet.fullname" .) }}
{{- end }}

{{/* Name of the Secret holding the bundled Redis password. */}}
{{- define "comfyfleet.redis.passwordSecret" -}}
{{- default (printf "%s-redis" (include "comfyfleet.fullname" .)) .Values.redis.bundled.auth.existingSecret }}
{{- end }}

{{/*
Environment that gives a comfyfleet process COMFYFLEET_REDIS_URL. Credentials never appear in a
value: a bundled Redis password comes from its Secret and is spliced in by the kubelet's $(VAR)
expansion; an external URL with credentials must come from an existing Secret.
*/}}
{{- define "comfyfleet.redisEnv" -}}
{{- if eq .Values.redis.mode "bundled" }}
{{- $host := printf "%s.%s.svc" (include "comfyfleet.redis.fullname" .) .Release.Namespace }}
{{- if .Values.redis.bundled.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "comfyfleet.redis.passwordSecret" . }}
      key: {{ .Values.redis.bundled.auth.existingSecretKey }}
- name: COMFYFLEET_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/%d" $host (int .Values.redis.database) | quote }}
{{- else }}
- name: COMFYFLEET_REDIS_URL
  value: {{ printf "redis://%s:6379/%d" $host (int .Values.redis.database) | quote }}
{{- end }}
{{- else if .Values.redis.external.existingSecret }}
- name: COMFYFLEET_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- else }}
- name: COMFYFLEET_REDIS_URL
  value: {{ required "redis.external.url or redis.external.existingSecret is required when redis.mode=external" .Values.redis.external.url | quote }}
{{- end }}
- name: COMFYFLEET_REDIS_PREFIX
  value: {{ .Values.redis.prefix | quote }}
{{- end }}

{{/* Environment every comfyfleet process shares. */}}
{{- define "comfyfleet.commonEnv" -}}
{{ include "comfyfleet.redisEnv" . | trim }}
- name: COMFYFLEET_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: COMFYFLEET_DATA_DIR
  value: /data
- name: HOME
  value: /tmp
{{- if .Values.firebase.enabled }}
- name: COMFYFLEET_FIREBASE_PROJECT_ID
  value: {{ required "firebase.projectId is required when firebase.enabled" .Values.firebase.projectId | quote }}
- name: COMFYFLEET_FIREBASE_BUCKET
  value: {{ .Values.firebase.bucket | quote }}
- name: COMFYFLEET_FIRESTORE_COLLECTION
  value: {{ .Values.firebase.firestoreCollection | quote }}
- name: COMFYFLEET_FIREBASE_CREDENTIALS_FILE
  value: /var/run/secrets/comfyfleet/firebase/{{ .Values.firebase.credentials.existingSecretKey }}
- name: COMFYFLEET_OUTPUT_STORE
  value: {{ ternary "s3" (ternary "firebase" "local" (ne .Values.firebase.bucket "")) .Values.s3.enabled | quote }}
- name: COMFYFLEET_FIRESTORE_ENABLED
  value: {{ .Values.firebase.firestore | quote }}
- name: COMFYFLEET_FIREBASE_CHECK_REVOKED
  value: {{ .Values.firebase.checkRevoked | quote }}
- name: COMFYFLEET_FIREBASE_ADMIN_CLAIM
  value: {{ .Values.firebase.adminClaim | quote }}
- name: COMFYFLEET_STORAGE_URL_EXPIRY_SECONDS
  value: {{ .Values.firebase.urlExpirySeconds | quote }}
{{- end }}
{{- if .Values.s3.enabled }}
{{- if not .Values.firebase.enabled }}
- name: COMFYFLEET_OUTPUT_STORE
  value: "s3"
{{- end }}
- name: COMFYFLEET_S3_BUCKET
  value: {{ required "s3.bucket is required when s3.enabled" .Values.s3.bucket | quote }}
- name: COMFYFLEET_S3_PREFIX
  value: {{ .Values.s3.prefix | quote }}
- name: COMFYFLEET_S3_REGION
  value: {{ .Values.s3.region | quote }}
- name: COMFYFLEET_S3_ENDPOINT_URL
  value: {{ .Values.s3.endpointUrl | quote }}
- name: COMFYFLEET_S3_PATH_STYLE
  value: {{ .Values.s3.pathStyle | quote }}
{{- if not .Values.firebase.enabled }}
- name: COMFYFLEET_STORAGE_URL_EXPIRY_SECONDS
  value: {{ .Values.s3.urlExpirySeconds | quote }}
{{- end }}
{{- with .Values.s3.credentials.existingSecret }}
- name: COMFYFLEET_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.s3.credentials.accessKeyIdKey }}
- name: COMFYFLEET_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.s3.credentials.secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- with .Values.webhooks.existingSecret }}
- name: COMFYFLEET_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.webhooks.existingSecretKey }}
{{- end }}
{{- with .Values.webhooks.allowHosts }}
- name: COMFYFLEET_OUTBOUND_ALLOW_HOSTS
  value: {{ join "," . | quote }}
{{- end }}
- name: COMFYFLEET_WEBHOOK_RETRY_WINDOW_SECONDS
  value: {{ .Values.webhooks.retryWindowSeconds | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the API tokens JSON. */}}
{{- define "comfyfleet.apiTokensSecret" -}}
{{- default (printf "%s-api-tokens" (include "comfyfleet.fullname" .)) .Values.auth.apiTokens.existingSecret }}
{{- end }}

{{/* Name of the Secret holding the Firebase service-account JSON. */}}
{{- define "comfyfleet.firebaseSecret" -}}
{{- default (printf "%s-firebase" (include "comfyfleet.fullname" .)) .Values.firebase.credentials.existingSecret }}
{{- end }}

{{/* Writable scratch volumes (the root filesystem is read-only) + optional Firebase credentials. */}}
{{- define "comfyfleet.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .ctx.Values.tmpSizeLimit }}
{{- if .withData }}
- name: data
{{- if .ctx.Values.dataVolume.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .ctx.Values.dataVolume.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .ctx.Values.dataVolume.sizeLimit }}
{{- end }}
{{- end }}
{{- if .ctx.Values.firebase.enabled }}
- name: firebase-credentials
  secret:
    secretName: {{ include "comfyfleet.firebaseSecret" .ctx }}
    defaultMode: 0440
    items:
      - key: {{ .ctx.Values.firebase.credentials.existingSecretKey }}
        path: {{ .ctx.Values.firebase.credentials.existingSecretKey }}
{{- end }}
{{- end }}

{{- define "comfyfleet.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .withData }}
- name: data
  mountPath: /data
{{- end }}
{{- if .ctx.Values.firebase.enabled }}
- name: firebase-credentials
  mountPath: /var/run/secrets/comfyfleet/firebase
  readOnly: true
{{- end }}
{{- end }}

{{/* Checksums of chart-made Secrets, so pods roll when their content changes. */}}
{{- define "comfyfleet.secretChecksums" -}}
{{- if and (eq .Values.auth.mode "static") (not .Values.auth.apiTokens.existingSecret) }}
checksum/api-tokens: {{ toJson .Values.auth.apiTokens.tokens | sha256sum }}
{{- end }}
{{- if and .Values.firebase.enabled (not .Values.firebase.credentials.existingSecret) }}
checksum/firebase: {{ .Values.firebase.credentials.json | sha256sum }}
{{- end }}
{{- end }}

{{/* Pod-level scheduling fields of one component's values block. */}}
{{- define "comfyfleet.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}
