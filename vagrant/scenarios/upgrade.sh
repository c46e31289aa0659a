#!/usr/bin/env bash
# A rolling upgrade under load, seen from a client.
#
#   upgrade.sh -i INVENTORY [--timeout-s N] [ansible-playbook arguments...]
#
# Starts the client loop on the first host of `clients` (curl of
# `demo_vip_url` every ~100 ms, each request given N seconds, default 5),
# runs deploy/ansible/upgrade.yml on the inventory with the other arguments
# passed through (for example
# `-e director_binary_local_path=/path/to/new/director`), stops the loop and
# prints the requests, the failed ones, and those answered only after more
# than 1 s. A draining director drops new SYNs for its VIPs until they answer
# elsewhere, and the client's TCP sends such a SYN again a second later
# (README, "A drain or a stop fails no request"): with a 1 s timeout that
# retry would count as a failure, so the default leaves it room.
# Exit 0 when the playbook succeeded and no request failed; 1 otherwise; 2
# for a setup error.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# shellcheck disable=SC2317 # called by parse_inventory_arg
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

parse_inventory_arg "$@"
timeout_s=5
args=()
set -- "${rest[@]+"${rest[@]}"}"
while (($#)); do
  case "$1" in
  --timeout-s) timeout_s=$2; shift 2 ;;
  *) args+=("$1"); shift ;;
  esac
done

client=$(group_hosts clients | head -n 1)
[[ -n $client ]] || die "no host in the group clients"
url=$(host_var "$client" demo_vip_url)
[[ -n $url ]] || die "demo_vip_url is not set for $client"

trap 'client_stop >/dev/null 2>&1 || true' EXIT
client_start "$url" "$timeout_s"

log "ansible-playbook upgrade.yml ${args[*]+${args[*]}}"
start=$(date +%s)
rc=0
(cd "$ansible_dir" && ansible-playbook -i "$inventory" upgrade.yml "${args[@]+"${args[@]}"}") || rc=$?
took=$(($(date +%s) - start))
sleep 1
trap - EXIT
loglines=$(client_stop)
summary=$(client_summary <<<"$loglines")
requests=$(summary_field "$summary" requests)
failed=$(summary_field "$summary" failed)
gap=$(summary_field "$summary" longest_gap_ms)
slow=$(summary_field "$summary" slow)
slowest=$(summary_field "$summary" slowest_ms)

echo "upgrade.yml: exit $rc, ${took} s"
echo "requests:    $requests (${timeout_s} s timeout each)"
echo "failed:      $failed"
echo "over 1 s:    $slow (slowest answer $slowest ms)"
echo "longest gap: $gap ms"
if ((failed > 0)); then
  grep ' fail ' <<<"$loglines" | head -n 5 | while read -r t _; do
    echo "  failed at $(date -u -d "@$((t / 1000)).$(printf '%03d' $((t % 1000)))" +%H:%M:%S.%3N)"
  done
fi
if ((rc != 0)); then
  echo "FAIL: upgrade.yml failed (exit $rc)" >&2
  exit 1
fi
if ((failed > 0)); then
  echo "FAIL: $failed of $requests requests failed during the upgrade" >&2
  exit 1
fi
echo "ok: upgraded with $requests requests, none failed"
