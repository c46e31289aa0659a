#!/usr/bin/env bash
# Writes the kubeconfig the directors use to reach the Kubernetes API: the
# ServiceAccount director-system/director (rbac.yaml) with its long-lived
# token, the cluster's CA and the API server's URL. See README.md.
set -euo pipefail

readonly NAMESPACE=director-system
readonly SECRET=director-token
readonly PROG=${0##*/}

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<EOF
Usage: $PROG [OPTIONS]

Writes a kubeconfig for director: the ServiceAccount $NAMESPACE/director
with the long-lived token of the Secret $NAMESPACE/$SECRET,
the cluster's CA (the Secret's ca.crt) and the API server's URL. Uses your
kubectl configuration (current context unless --context) to apply rbac.yaml
and to read the token; the token itself is never printed.

Options:
  --context NAME      kubectl context to use (default: the current context)
  --kubeconfig FILE   your kubeconfig (default: kubectl's own choice,
                      \$KUBECONFIG or ~/.kube/config)
  --server URL        API server URL the directors use (default: the context's
                      server; set it when the directors reach the API at another
                      address, e.g. https://10.10.0.5:6443)
  --out FILE          where to write the kubeconfig (default:
                      director.kubeconfig; mode 0600, replaced if it exists)
  --rbac FILE         the manifest to apply (default: rbac.yaml beside this
                      script)
  --no-apply          do not apply the manifest (an administrator already did)
  --timeout SECONDS   how long to wait for the token to appear (default: 60)
  --no-check          do not check the written kubeconfig against the API server
  -h, --help          this text

Environment:
  KUBECTL             the kubectl binary (default: kubectl from PATH)

Applying rbac.yaml creates a Namespace, a ClusterRole and a
ClusterRoleBinding: it needs a cluster administrator. With --no-apply,
reading the Secret needs only "get secrets" in namespace $NAMESPACE.

Then copy the file to /etc/director/kubeconfig on every director (owned by the
service user, mode 0600) and name it in director.yaml:
  kubernetes:
    kubeconfig: /etc/director/kubeconfig
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

warn() {
    printf '%s: warning: %s\n' "$PROG" "$*" >&2
}

info() {
    printf '%s: %s\n' "$PROG" "$*" >&2
}

# The value of option $1, given as $2; fails when it is missing.
need_value() {
    [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "option $1 needs a value (see --help)"
}

context=""
user_kubeconfig=""
server=""
out="director.kubeconfig"
rbac="$script_dir/rbac.yaml"
apply=1
timeout=60
check=1

while [[ $# -gt 0 ]]; do
    case $1 in
    --context) need_value "$@"; context=$2; shift 2 ;;
    --context=*) context=${1#*=}; shift ;;
    --kubeconfig) need_value "$@"; user_kubeconfig=$2; shift 2 ;;
    --kubeconfig=*) user_kubeconfig=${1#*=}; shift ;;
    --server) need_value "$@"; server=$2; shift 2 ;;
    --server=*) server=${1#*=}; shift ;;
    --out) need_value "$@"; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --rbac) need_value "$@"; rbac=$2; shift 2 ;;
    --rbac=*) rbac=${1#*=}; shift ;;
    --timeout) need_value "$@"; timeout=$2; shift 2 ;;
    --timeout=*) timeout=${1#*=}; shift ;;
    --no-apply) apply=0; shift ;;
    --no-check) check=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ $timeout =~ ^[0-9]+$ && $timeout -ge 1 ]] || die "--timeout must be a whole number of seconds, 1 or more (got '$timeout')"
[[ -n $out ]] || die "--out needs a file name"
[[ -d $(dirname -- "$out") ]] || die "the directory of --out '$out' does not exist"
[[ -d $out ]] && die "--out '$out' is a directory; give a file name"
if [[ -n $server ]]; then
    [[ $server =~ ^https?://[^[:space:]\"\\]+$ ]] || die "--server must be a URL such as https://10.10.0.5:6443 (got '$server')"
fi
if [[ $apply -eq 1 && ! -r $rbac ]]; then
    die "cannot read the manifest '$rbac' (give it with --rbac FILE, or use --no-apply if it is applied already)"
fi

kubectl_bin=${KUBECTL:-kubectl}
command -v -- "$kubectl_bin" >/dev/null 2>&1 ||
    die "kubectl not found ('$kubectl_bin' is not in PATH); install kubectl or set KUBECTL=/path/to/kubectl"

kc=("$kubectl_bin")
if [[ -n $user_kubeconfig ]]; then
    [[ -r $user_kubeconfig ]] || die "cannot read the kubeconfig '$user_kubeconfig' given with --kubeconfig"
    kc+=(--kubeconfig "$user_kubeconfig")
fi

work=$(mktemp -d)
tmp_out=""
cleanup() {
    rm -rf -- "$work"
    if [[ -n $tmp_out ]]; then rm -f -- "$tmp_out"; fi
}
trap cleanup EXIT
errf="$work/stderr"

# The context: given, or kubectl's current one.
if [[ -z $context ]]; then
    context=$("${kc[@]}" config current-context 2>"$errf") || context=""
    [[ -n $context ]] ||
        die "your kubeconfig has no current context; pass --context NAME (\`kubectl config get-contexts\` lists them)"
else
    "${kc[@]}" config get-contexts -- "$context" >/dev/null 2>"$errf" ||
        die "no context '$context' in your kubeconfig (\`kubectl config get-contexts\` lists them)"
fi
kc+=(--context "$context")

# The API server: given, or the context's.
if [[ -z $server ]]; then
    server=$("${kc[@]}" config view --minify -o 'jsonpath={.clusters[0].cluster.server}' 2>"$errf") || server=""
    [[ -n $server ]] || die "context '$context' names no cluster with a server URL; pass --server URL"
    [[ $server =~ ^https?://[^[:space:]\"\\]+$ ]] || die "context '$context' has an unusable server URL '$server'; pass --server URL"
    case $server in
    *://127.* | *://localhost[:/]* | *://localhost | *://\[::1\]*)
        warn "the server URL $server is a loopback address: directors on other hosts cannot reach it; pass --server https://ADDRESS:PORT"
        ;;
    *) ;;
    esac
fi
info "context '$context'; the directors will use the API server $server"

# Names the usual causes of a failed kubectl call, from its error output.
explain_failure() {
    local what=$1
    if grep -qi 'forbidden' "$errf"; then
        die "no permission to $what with context '$context'${2:+: $2}"
    elif grep -qiE 'unable to connect|connection refused|was refused|no such host|i/o timeout|deadline exceeded|no route to host' "$errf"; then
        die "cannot reach the API server of context '$context' to $what"
    elif grep -qiE 'unauthorized|must be logged in|provide credentials' "$errf"; then
        die "the credentials of context '$context' were refused (Unauthorized) when trying to $what"
    fi
    die "failed to $what with context '$context' (kubectl's message is above)"
}

if [[ $apply -eq 1 ]]; then
    info "applying $rbac"
    if ! "${kc[@]}" apply -f "$rbac" 1>&2 2>"$errf"; then
        cat "$errf" >&2
        explain_failure "apply $rbac" \
            "it creates a Namespace, a ClusterRole and a ClusterRoleBinding, which needs a cluster administrator; or have one apply rbac.yaml and run this with --no-apply"
    fi
fi

# Wait until the token controller has put the token into the Secret.
info "waiting up to ${timeout}s for the token in Secret $NAMESPACE/$SECRET"
deadline=$((SECONDS + timeout))
token_b64=""
while :; do
    if token_b64=$("${kc[@]}" -n "$NAMESPACE" get secret "$SECRET" -o 'jsonpath={.data.token}' 2>"$errf"); then
        [[ -n $token_b64 ]] && break
    elif grep -q 'NotFound\|not found' "$errf"; then
        if [[ $apply -eq 0 ]]; then
            die "the Secret $NAMESPACE/$SECRET does not exist: apply rbac.yaml first (run without --no-apply)"
        fi
        # Just applied, so it should exist; the token controller deletes a
        # token Secret whose ServiceAccount is missing. Keep waiting.
    else
        cat "$errf" >&2
        explain_failure "read the Secret $NAMESPACE/$SECRET" "it needs \"get secrets\" in namespace $NAMESPACE"
    fi
    if ((SECONDS >= deadline)); then
        if [[ -z $token_b64 ]] && grep -q 'NotFound\|not found' "$errf"; then
            die "the Secret $NAMESPACE/$SECRET disappeared after it was applied (the token controller removes a token Secret whose ServiceAccount $NAMESPACE/director is missing); check \`kubectl -n $NAMESPACE get serviceaccount director\` and run again"
        fi
        die "the Secret $NAMESPACE/$SECRET got no token within ${timeout}s; kube-controller-manager's token controller fills it in: check that it runs and see \`kubectl -n $NAMESPACE describe secret $SECRET\` (or wait longer with --timeout)"
    fi
    sleep 1
done

token=$(printf '%s' "$token_b64" | base64 -d 2>/dev/null) || die "the token in Secret $NAMESPACE/$SECRET is not valid base64"
unset token_b64
[[ $token =~ ^[A-Za-z0-9._-]+$ ]] || die "the token in Secret $NAMESPACE/$SECRET does not look like a ServiceAccount token"

ca_b64=$("${kc[@]}" -n "$NAMESPACE" get secret "$SECRET" -o 'jsonpath={.data.ca\.crt}' 2>"$errf") || {
    cat "$errf" >&2
    explain_failure "read the Secret $NAMESPACE/$SECRET"
}
[[ -n $ca_b64 ]] ||
    die "the Secret $NAMESPACE/$SECRET has no ca.crt (kube-controller-manager adds it from its --root-ca-file)"
ca_pem=$(printf '%s' "$ca_b64" | base64 -d 2>/dev/null) || ca_pem=""
[[ $ca_pem == *"-----BEGIN CERTIFICATE-----"* ]] ||
    die "the ca.crt of Secret $NAMESPACE/$SECRET is not a PEM certificate"

# Write beside the target and move into place, so a reader never sees half a
# file and the file is never readable by others (mktemp makes it 0600).
tmp_out=$(mktemp -- "$out.XXXXXX")
cat >"$tmp_out" <<EOF
# director's kubeconfig: ServiceAccount $NAMESPACE/director, written by
# $PROG from context '$context'. Keep it secret: it holds a token that
# stays valid until the Secret $NAMESPACE/$SECRET is deleted.
apiVersion: v1
kind: Config
clusters:
  - name: director-cluster
    cluster:
      server: "$server"
      certificate-authority-data: $ca_b64
users:
  - name: director
    user:
      token: "$token"
contexts:
  - name: director
    context:
      cluster: director-cluster
      user: director
current-context: director
EOF
unset token
chmod 0600 -- "$tmp_out"
mv -f -- "$tmp_out" "$out"
tmp_out=""
info "wrote $out (mode 0600): cluster director-cluster, user director, context director"

if [[ $check -eq 1 ]]; then
    # The user's own rights, as the API server sees them (a
    # SelfSubjectAccessReview, which every authenticated user may make).
    # RBAC changes reach the authorizer within moments: allow a few tries.
    for attempt in 1 2 3 4 5; do
        if answer=$("$kubectl_bin" --kubeconfig "$out" --request-timeout=10s \
            auth can-i list services --all-namespaces 2>"$errf"); then
            break
        fi
        if [[ $answer != no ]]; then
            reason=$(tail -n 1 -- "$errf") || reason=""
            warn "could not check $out against $server from here (${reason:-no answer}); check from a director: kubectl --kubeconfig /etc/director/kubeconfig auth can-i list services --all-namespaces"
            break
        fi
        if [[ $attempt -eq 5 ]]; then
            die "$out works but its user may not list services: is the ClusterRoleBinding 'director' in place? (kubectl get clusterrolebinding director)"
        fi
        sleep 1
    done
    if [[ ${answer:-} == yes ]]; then
        "$kubectl_bin" --kubeconfig "$out" --request-timeout=10s \
            auth can-i patch services --subresource=status --all-namespaces >/dev/null 2>"$errf" ||
            die "$out can list services but may not patch services/status: check the ClusterRole 'director' (kubectl describe clusterrole director)"
        info "checked: $out may list services and patch services/status"
    fi
fi

printf '%s\n' "$out"
