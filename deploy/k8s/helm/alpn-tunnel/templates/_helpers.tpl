{{/* Names and labels. */}}
{{- define "alpn-tunnel.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "alpn-tunnel.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "alpn-tunnel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "alpn-tunnel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "alpn-tunnel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "alpn-tunnel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The filter's upgrade path: the chart routes one (PROTOCOL.md's by default). */}}
{{- define "alpn-tunnel.upgradePath" -}}
{{- $paths := .Values.filter.config.upgrade_paths | default (list "/connectionupgrade") -}}
{{- if ne (len $paths) 1 -}}
{{- fail "filter.config.upgrade_paths: the chart routes exactly one upgrade path; list one" -}}
{{- end -}}
{{- first $paths -}}
{{- end -}}

{{/* The upgrade types the filter allows, as a 426 lists them. */}}
{{- define "alpn-tunnel.allowedTypes" -}}
{{- .Values.filter.config.allowed_types | default (list "alpn" "alpn-ping" "websocket") | join ", " -}}
{{- end -}}

{{- define "alpn-tunnel.duplicateUpgradeHeader" -}}
{{- .Values.filter.config.duplicate_upgrade_header | default "x-alpn-upgrade" | lower -}}
{{- end -}}

{{/* The filter's JSON configuration, on one line, after the chart's own checks. */}}
{{- define "alpn-tunnel.filterConfigJson" -}}
{{- $c := .Values.filter.config -}}
{{- if and (gt (int ($c.trusted_hops | default 0)) 0) (empty $c.trusted_proxies) -}}
{{- fail "filter.config.trusted_proxies: required when trusted_hops is above 0: list the load balancer's addresses (your ALB subnets or VPC CIDR) whose X-Forwarded-For is believed" -}}
{{- end -}}
{{- if $c.type_tokens -}}
{{- fail "filter.config.type_tokens: the chart's Envoy lists PROTOCOL.md's upgrade types (alpn, alpn-ping, websocket); renamed types are not supported by the chart" -}}
{{- end -}}
{{- $c | toJson -}}
{{- end -}}

{{/* Seconds a tunnel may outlive the start of the Pod's termination. */}}
{{- define "alpn-tunnel.drainSeconds" -}}
{{- if le (int .Values.drain.deadlineSeconds) (int .Values.drain.lbGraceSeconds) -}}
{{- fail (printf "drain.deadlineSeconds: %d must be above drain.lbGraceSeconds (%d): the deadline counts from the start of the drain" (int .Values.drain.deadlineSeconds) (int .Values.drain.lbGraceSeconds)) -}}
{{- end -}}
{{- add .Values.drain.lbGraceSeconds .Values.drain.deadlineSeconds .Values.drain.routerGraceSeconds -}}
{{- end -}}

{{- define "alpn-tunnel.terminationGracePeriodSeconds" -}}
{{- $need := add (include "alpn-tunnel.drainSeconds" . | int) .Values.drain.marginSeconds -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- $need -}}
{{- else if lt (int .Values.terminationGracePeriodSeconds) (int (include "alpn-tunnel.drainSeconds" .)) -}}
{{- fail (printf "terminationGracePeriodSeconds: %d is shorter than the drain (drain.lbGraceSeconds + drain.deadlineSeconds + drain.routerGraceSeconds = %s s): the kubelet would kill the Pod with tunnels still open" (int .Values.terminationGracePeriodSeconds) (include "alpn-tunnel.drainSeconds" .)) -}}
{{- else -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* The load balancer's drain (ALB deregistration delay, GKE connection draining). */}}
{{- define "alpn-tunnel.lbDrainSeconds" -}}
{{- $v := index . 0 -}}{{- $ctx := index . 1 -}}
{{- if kindIs "invalid" $v -}}
{{- include "alpn-tunnel.drainSeconds" $ctx -}}
{{- else -}}
{{- int $v -}}
{{- end -}}
{{- end -}}

{{/* router.toml: the router's configuration, from values. */}}
{{- define "alpn-tunnel.routerToml" -}}
{{- $c := .Values.filter.config -}}
{{- $names := dict -}}
{{- range $k := list "upgrade_paths" "type_tokens" "allowed_types" "subprotocol_tokens" "websocket_subprotocols" "duplicate_upgrade_header" "client_addr_header" -}}
{{- if hasKey $c $k -}}{{- $_ := set $names $k (index $c $k) -}}{{- end -}}
{{- end -}}
{{- $upgrade := dict "listen" (printf "127.0.0.1:%d" (int .Values.router.upgradePort)) "trusted_peers" (list "127.0.0.1/32") "ping_interval" (printf "%ds" (int .Values.router.pingIntervalSeconds)) -}}
{{- if $names -}}{{- $_ := set $upgrade "names" $names -}}{{- end -}}
{{- $limits := dict "drain_grace" (printf "%ds" (int .Values.drain.routerGraceSeconds)) -}}
{{- range $k, $v := .Values.router.limits -}}
{{- if kindIs "float64" $v -}}{{- $_ := set $limits $k (int64 $v) -}}{{- else -}}{{- $_ := set $limits $k $v -}}{{- end -}}
{{- end -}}
{{- $metrics := dict "listen" (printf "0.0.0.0:%d" (int .Values.router.metricsPort)) "max_connections" (int64 .Values.router.metrics.max_connections) "request_timeout" .Values.router.metrics.request_timeout -}}
{{- $tls := dict "cert" (printf "%s/%s" .Values.router.tls.mountPath .Values.router.tls.cert) "key" (printf "%s/%s" .Values.router.tls.mountPath .Values.router.tls.key) -}}
{{- $routes := list -}}
{{- range .Values.router.routes -}}
{{- $r := dict -}}
{{- range $k, $v := . -}}{{- $_ := set $r $k $v -}}{{- end -}}
{{- $routes = append $routes $r -}}
{{- end -}}
{{- $doc := dict "upgrade" $upgrade "metrics" $metrics "limits" $limits "tls" $tls "route" $routes -}}
# alpn-router in the Pod, rendered by the chart from its values: Envoy in the
# same Pod reaches the upgrade listener on 127.0.0.1; probes, Prometheus and
# Envoy's health check reach the metrics listener.
{{ toToml $doc }}
{{- end -}}
