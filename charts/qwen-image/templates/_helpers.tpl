{{/*
Names. Kubernetes names are DNS labels of at most 63 characters, so every name is cut there.
*/}}
{{- define "qwen-image.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
`<release>-<chart>`, or the release name alone when it already contains the chart name.
*/}}
{{- define "qwen-image.fullname" -}}
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

{{/*
Name of one role's objects: (dict "context" $ "component" "router").
*/}}
{{- define "qwen-image.componentName" -}}
{{- printf "%s-%s" (include "qwen-image.fullname" .context | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" -}}
{{- end -}}

{{- define "qwen-image.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Standard labels of every object: (dict "context" $ "component" "router"); component may be "".
*/}}
{{- define "qwen-image.labels" -}}
{{- $ctx := .context -}}
helm.sh/chart: {{ include "qwen-image.chart" $ctx }}
{{ include "qwen-image.selectorLabels" . }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | replace "+" "_" | quote }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
app.kubernetes.io/part-of: {{ include "qwen-image.name" $ctx }}
{{- with $ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels: only name, instance and component, because selectors are immutable.
*/}}
{{- define "qwen-image.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen-image.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/*
Image reference: (dict "image" .Values.router.image "context" $).
A digest pins the image; otherwise the tag, or the chart's appVersion.
*/}}
{{- define "qwen-image.image" -}}
{{- $repository := .image.repository -}}
{{- with .context.Values.imageRegistry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .context.Chart.AppVersion .image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "qwen-image.router.serviceAccountName" -}}
{{- if .Values.router.serviceAccount.create -}}
{{- default (include "qwen-image.componentName" (dict "context" . "component" "router")) .Values.router.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.router.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "qwen-image.worker.serviceAccountName" -}}
{{- if .Values.worker.serviceAccount.create -}}
{{- default (include "qwen-image.componentName" (dict "context" . "component" "worker")) .Values.worker.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.worker.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The chart's own Secret holds inline keys; existing Secrets are referenced instead.
*/}}
{{- define "qwen-image.secretName" -}}
{{- include "qwen-image.fullname" . -}}
{{- end -}}

{{- define "qwen-image.apiKeys.secretName" -}}
{{- default (include "qwen-image.secretName" .) .Values.apiKeys.existingSecret -}}
{{- end -}}

{{- define "qwen-image.apiKeys.secretKey" -}}
{{- if .Values.apiKeys.existingSecret -}}{{ .Values.apiKeys.existingSecretKey }}{{- else -}}api-keys{{- end -}}
{{- end -}}

{{- define "qwen-image.apiKeys.enabled" -}}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys -}}true{{- end -}}
{{- end -}}

{{- define "qwen-image.promptRewrite.secretName" -}}
{{- default (include "qwen-image.secretName" .) .Values.promptRewrite.existingSecret -}}
{{- end -}}

{{- define "qwen-image.promptRewrite.secretKey" -}}
{{- if .Values.promptRewrite.existingSecret -}}{{ .Values.promptRewrite.existingSecretKey }}{{- else -}}openai-api-key{{- end -}}
{{- end -}}

{{- define "qwen-image.promptRewrite.keyEnabled" -}}
{{- if and .Values.promptRewrite.enabled (or .Values.promptRewrite.existingSecret .Values.promptRewrite.apiKey) -}}true{{- end -}}
{{- end -}}

{{- define "qwen-image.imageStorage.claimName" -}}
{{- default (printf "%s-images" (include "qwen-image.fullname" . | trunc 56 | trimSuffix "-")) .Values.imageStorage.persistence.existingClaim -}}
{{- end -}}

{{/*
URL prefix of stored images: the explicit value, else the first ingress host.
*/}}
{{- define "qwen-image.imageStorage.downloadUrlPrefix" -}}
{{- if .Values.imageStorage.downloadUrlPrefix -}}
{{- .Values.imageStorage.downloadUrlPrefix -}}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts -}}
{{- $host := first .Values.ingress.hosts -}}
{{- $scheme := "http" -}}
{{- range .Values.ingress.tls -}}
{{- if has $host .hosts -}}{{- $scheme = "https" -}}{{- end -}}
{{- end -}}
{{- printf "%s://%s/images" $scheme $host -}}
{{- end -}}
{{- end -}}

{{/*
Seconds an HTTP proxy must wait for one request: the task timeout plus a margin for the
router's own work (prompt rewrite, PNG encoding, response transfer).
*/}}
{{- define "qwen-image.proxyTimeoutSeconds" -}}
{{- add (int .Values.taskTimeoutSeconds) 60 -}}
{{- end -}}

{{/*
Several router pods share the image PVC only through ReadWriteMany. Fails the render for a
PVC the chart creates; an existing claim is the user's to check (NOTES says so).
*/}}
{{- define "qwen-image.validate.imageStorage" -}}
{{- $p := .Values.imageStorage.persistence -}}
{{- $r := .Values.router -}}
{{- $many := or (gt (int $r.replicaCount) 1) (and $r.autoscaling.enabled (gt (int $r.autoscaling.maxReplicas) 1)) -}}
{{- if and $p.enabled (not $p.existingClaim) $many (not (has "ReadWriteMany" $p.accessModes)) -}}
{{- fail "imageStorage.persistence.accessModes must include ReadWriteMany when several router pods run (router.replicaCount > 1 or router.autoscaling.maxReplicas > 1): every router serves every stored image" -}}
{{- end -}}
{{- end -}}

{{/*
A worker must get SIGTERM only after its endpoint is gone, and must be allowed to drain.
*/}}
{{- define "qwen-image.validate.workerDrain" -}}
{{- $w := .Values.worker -}}
{{- if le (int $w.terminationGracePeriodSeconds) (add (int $w.drainTimeoutSeconds) (int $w.preStopSleepSeconds)) -}}
{{- fail "worker.terminationGracePeriodSeconds must exceed worker.drainTimeoutSeconds + worker.preStopSleepSeconds, or running jobs are killed mid-drain" -}}
{{- end -}}
{{- end -}}

{{- define "qwen-image.validate.routerDrain" -}}
{{- $r := .Values.router -}}
{{- if le (int $r.terminationGracePeriodSeconds) (add (int .Values.taskTimeoutSeconds) (int $r.preStopSleepSeconds)) -}}
{{- fail "router.terminationGracePeriodSeconds must exceed taskTimeoutSeconds + router.preStopSleepSeconds, or requests in flight are cut off" -}}
{{- end -}}
{{- end -}}

{{/*
Every worker pool as a JSON list of {component, modelName, values}: `worker` (MODEL_NAME
modelName) first, then each of workerPools in name order, its block laid over `worker`.
*/}}
{{- define "qwen-image.workerPools" -}}
{{- $pools := list (dict "component" "worker" "modelName" .Values.modelName "values" .Values.worker) -}}
{{- range $name, $block := .Values.workerPools -}}
{{- $values := include "qwen-image.overlay" (dict "base" $.Values.worker "over" (omit $block "modelName")) | fromJson -}}
{{- $pools = append $pools (dict "component" (printf "worker-%s" $name) "modelName" (required (printf "workerPools.%s.modelName is required" $name) $block.modelName) "values" $values) -}}
{{- end -}}
{{- toJson $pools -}}
{{- end -}}

{{/*
`over` laid over `base`, maps merged key by key, anything else (false and 0 included)
replaced: sprig's merge functions would keep the base's value over a false or a 0.
*/}}
{{- define "qwen-image.overlay" -}}
{{- $out := deepCopy .base -}}
{{- range $key, $value := .over -}}
{{- $base := get $out $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $base) -}}
{{- $_ := set $out $key (include "qwen-image.overlay" (dict "base" $base "over" $value) | fromJson) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
The Services of every worker pool, comma-separated: what router discovery watches.
*/}}
{{- define "qwen-image.workerServiceNames" -}}
{{- $names := list -}}
{{- range $pool := include "qwen-image.workerPools" . | fromJsonArray -}}
{{- $names = append $names (include "qwen-image.componentName" (dict "context" $ "component" $pool.component)) -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}
