{{/* Names and labels. */}}

{{- define "meterway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "meterway.fullname" -}}
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

{{- define "meterway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "meterway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meterway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The gateway pods alone: the migration pod shares name and instance, and must not receive
Service traffic or count towards the disruption budget. */}}
{{- define "meterway.gatewaySelectorLabels" -}}
{{ include "meterway.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "meterway.labels" -}}
helm.sh/chart: {{ include "meterway.chart" . }}
{{ include "meterway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "meterway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meterway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "meterway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* The Secret the chart creates for values given in plain text (and a generated master key). */}}
{{- define "meterway.secretName" -}}
{{- include "meterway.fullname" . }}
{{- end }}

{{/* The same database credentials for the migration Job: a hook resource, because the release's
own Secret does not exist yet when pre-install hooks run. */}}
{{- define "meterway.migrationSecretName" -}}
{{- printf "%s-migration" (include "meterway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Checks that fail the render with a message naming the values to set, before anything reaches
the cluster.
*/}}
{{- define "meterway.validate" -}}
{{- $db := .Values.database }}
{{- $dbWays := 0 }}
{{- if $db.url }}{{ $dbWays = add1 $dbWays }}{{ end }}
{{- if $db.urlSecret.name }}{{ $dbWays = add1 $dbWays }}{{ end }}
{{- if $db.host }}{{ $dbWays = add1 $dbWays }}{{ end }}
{{- if eq $dbWays 0 }}
{{- fail "meterway needs PostgreSQL for its usage ledger: set database.host (with database.passwordSecret.name), database.urlSecret.name, or database.url" }}
{{- end }}
{{- if gt $dbWays 1 }}
{{- fail "set only one of database.url, database.urlSecret.name and database.host" }}
{{- end }}
{{- if and $db.host (contains ":" (regexReplaceAll "^\\[.*\\]" $db.host "")) }}
{{- fail (printf "database.host %q carries a port: give the host name alone and the port in database.port" $db.host) }}
{{- end }}
{{- if and $db.password $db.passwordSecret.name }}
{{- fail "set database.password or database.passwordSecret.name, not both" }}
{{- end }}
{{- if and $db.passwordSecret.usernameKey (not $db.passwordSecret.name) }}
{{- fail "database.passwordSecret.usernameKey reads the role from database.passwordSecret.name: set that Secret's name too" }}
{{- end }}
{{- $r := .Values.redis }}
{{- $redisWays := 0 }}
{{- if $r.url }}{{ $redisWays = add1 $redisWays }}{{ end }}
{{- if $r.urlSecret.name }}{{ $redisWays = add1 $redisWays }}{{ end }}
{{- if $r.host }}{{ $redisWays = add1 $redisWays }}{{ end }}
{{- if gt $redisWays 1 }}
{{- fail "set only one of redis.url, redis.urlSecret.name and redis.host" }}
{{- end }}
{{- if and $r.host (contains ":" (regexReplaceAll "^\\[.*\\]" $r.host "")) }}
{{- fail (printf "redis.host %q carries a port: give the host name alone and the port in redis.port" $r.host) }}
{{- end }}
{{- if and $r.password $r.passwordSecret.name }}
{{- fail "set redis.password or redis.passwordSecret.name, not both" }}
{{- end }}
{{- if and .Values.masterKey.value .Values.masterKey.existingSecret }}
{{- fail "set masterKey.value or masterKey.existingSecret, not both" }}
{{- end }}
{{- $l := .Values.lago }}
{{- if and $l.apiKey $l.existingSecret }}
{{- fail "set lago.apiKey or lago.existingSecret, not both" }}
{{- end }}
{{- if and $l.apiBase (not (or $l.apiKey $l.existingSecret)) }}
{{- fail "lago.apiBase is set: give the API key as lago.existingSecret (or lago.apiKey)" }}
{{- end }}
{{- if and (or $l.apiKey $l.existingSecret) (not $l.apiBase) }}
{{- fail "a Lago API key is set: give lago.apiBase too" }}
{{- end }}
{{- if and .Values.otel.enabled (not .Values.otel.endpoint) }}
{{- fail "otel.enabled is true: set otel.endpoint to the collector's OTLP address" }}
{{- end }}
{{- end }}

{{/* Whether the chart's own Secret holds anything (it always holds the master key unless an existing Secret does). */}}
{{- define "meterway.needsSecret" -}}
{{- $v := .Values }}
{{- if or (not $v.masterKey.existingSecret) $v.database.url $v.database.password $v.redis.url $v.redis.password $v.lago.apiKey }}true{{ end }}
{{- end }}

{{/* The master key: the given one, else the one already stored by an earlier release, else a new one. */}}
{{- define "meterway.masterKey" -}}
{{- if .Values.masterKey.value }}
{{- .Values.masterKey.value }}
{{- else }}
{{- $stored := lookup "v1" "Secret" .Release.Namespace (include "meterway.secretName" .) }}
{{- if and $stored $stored.data (hasKey $stored.data "master-key") }}
{{- index $stored.data "master-key" | b64dec }}
{{- else }}
{{- printf "sk-%s" (randAlphaNum 48) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Database environment, shared by the gateway and the migration Job. `secret` is the name of the
chart-made Secret that holds plain-text values for this pod (the release's, or the hook copy).
*/}}
{{- define "meterway.databaseEnv" -}}
{{- $db := .root.Values.database }}
{{- if $db.url }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: database-url
{{- else if $db.urlSecret.name }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $db.urlSecret.name }}
      key: {{ $db.urlSecret.key }}
{{- else }}
- name: DATABASE_HOST
  value: {{ $db.host | quote }}
- name: DATABASE_PORT
  value: {{ $db.port | toString | quote }}
- name: DATABASE_USERNAME
{{- if and $db.passwordSecret.name $db.passwordSecret.usernameKey }}
  valueFrom:
    secretKeyRef:
      name: {{ $db.passwordSecret.name }}
      key: {{ $db.passwordSecret.usernameKey }}
{{- else }}
  value: {{ $db.user | quote }}
{{- end }}
- name: DATABASE_NAME
  value: {{ $db.name | quote }}
{{- if $db.passwordSecret.name }}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $db.passwordSecret.name }}
      key: {{ $db.passwordSecret.key }}
{{- else if $db.password }}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: database-password
{{- end }}
{{- end }}
{{- end }}

{{/* Everything else the gateway reads from its environment. */}}
{{- define "meterway.env" -}}
{{- $v := .Values }}
{{- $secret := include "meterway.secretName" . }}
- name: METERWAY_MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $v.masterKey.existingSecret | default $secret }}
      key: {{ ternary $v.masterKey.existingSecretKey "master-key" (ne $v.masterKey.existingSecret "") }}
{{ include "meterway.databaseEnv" (dict "root" . "secret" $secret) | trim }}
{{- $r := $v.redis }}
{{- if $r.url }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: redis-url
{{- else if $r.urlSecret.name }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $r.urlSecret.name }}
      key: {{ $r.urlSecret.key }}
{{- else if $r.host }}
- name: REDIS_HOST
  value: {{ $r.host | quote }}
- name: REDIS_PORT
  value: {{ $r.port | toString | quote }}
{{- if $r.passwordSecret.name }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.passwordSecret.name }}
      key: {{ $r.passwordSecret.key }}
{{- else if $r.password }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: redis-password
{{- end }}
{{- end }}
{{- $l := $v.lago }}
{{- if $l.apiBase }}
- name: LAGO_API_BASE
  value: {{ $l.apiBase | quote }}
- name: LAGO_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $l.existingSecret | default $secret }}
      key: {{ ternary $l.existingSecretKey "lago-api-key" (ne $l.existingSecret "") }}
{{- with $l.eventCode }}
- name: LAGO_API_EVENT_CODE
  value: {{ . | quote }}
{{- end }}
{{- with $l.chargeBy }}
- name: LAGO_API_CHARGE_BY
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- $o := $v.otel }}
{{- if $o.enabled }}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OTEL_SERVICE_NAME
  value: {{ $o.serviceName | quote }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $o.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $o.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $o.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $o.samplerArg | toString | quote }}
{{- $attrs := list "k8s.pod.name=$(K8S_POD_NAME)" (printf "k8s.namespace.name=%s" .Release.Namespace) (printf "service.version=%s" (.Values.image.tag | default .Chart.AppVersion)) }}
{{- range $k, $val := $o.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%v" $k $val) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- if $o.headersSecret.name }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ $o.headersSecret.name }}
      key: {{ $o.headersSecret.key }}
{{- end }}
{{- else }}
- name: OTEL_SDK_DISABLED
  value: "true"
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
