#!/usr/bin/env bash
# Host death of the VIP's owner, seen from a client.
#
#   failover.sh -i INVENTORY [--vip A.B.C.D] [--bound-s N]
#
# Finds the owner of the VIP (`director status -o json` on a director that
# answers), starts the client loop on the first host of `clients` (curl of
# `demo_vip_url` every ~100 ms, 1 s timeout), powers the owner's host off
# abruptly (sysrq `o`: no shutdown, no drain, like pulling the plug), waits
# until another director holds the VIP and the client is answered again,
# stops the loop and prints: old owner, new owner, requests, failed, the
# longest gap between two answered requests (ms).
# Exit 0 only when the VIP answered again, held by another director, within
# the bound (default 60 s from the power-off); 1 otherwise; 2 for a setup
# error. The powered-off host stays off: start it again yourself (`vagrant up
# NAME`; the test harness restarts its VM).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# shellcheck disable=SC2317 # called by parse_inventory_arg
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

parse_inventory_arg "$@"
vip=""
bound_s=60
set -- "${rest[@]+"${rest[@]}"}"
while (($#)); do
  case "$1" in
  --vip) vip=$2; shift 2 ;;
  --bound-s) bound_s=$2; shift 2 ;;
  *) die "unknown argument $1" ;;
  esac
done

client=$(group_hosts clients | head -n 1)
[[ -n $client ]] || die "no host in the group clients"
url=$(host_var "$client" demo_vip_url)
[[ -n $url ]] || die "demo_vip_url is not set for $client"
if [[ -z $vip ]]; then
  vip=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).hostname)' "$url")
fi

owners=$(vip_owners "$vip")
[[ -n $owners ]] || die "no director answered director status"
old=$(awk -F'\t' '$3 == "yes" { print $1; exit }' <<<"$owners")
[[ -n $old ]] || die "no director holds $vip: $(tr '\t\n' ' ;' <<<"$owners")"
log "$vip is held by $old"

trap 'client_stop >/dev/null 2>&1 || true' EXIT
client_start "$url"
sleep 2

log "powering $old off (sysrq o)"
adhoc "$old" ansible.builtin.shell \
  "nohup sh -c 'sleep 1; echo o > /proc/sysrq-trigger' >/dev/null 2>&1 &" --become >/dev/null
kill_ms=$(($(now_ms) + 1000))

new=""
deadline=$(($(date +%s) + bound_s + 5))
while (($(date +%s) < deadline)); do
  sleep 1
  owners=$(vip_owners "$vip" --limit "!$old")
  new=$(awk -F'\t' -v old="$old" '$3 == "yes" && $1 != old { print $1; exit }' <<<"$owners")
  if [[ -n $new ]]; then
    log "$vip is held by $new"
    break
  fi
done
# Let the client see a few answers from the new owner.
sleep 3
trap - EXIT
loglines=$(client_stop)
summary=$(client_summary <<<"$loglines")
requests=$(summary_field "$summary" requests)
failed=$(summary_field "$summary" failed)
gap=$(summary_field "$summary" longest_gap_ms)
last_ok=$(summary_field "$summary" last_ok_ms)

echo "old owner:   $old"
echo "new owner:   ${new:-none}"
echo "requests:    $requests"
echo "failed:      $failed"
echo "longest gap: $gap ms"
echo "over 1 s:    $(summary_field "$summary" slow) answered requests"

if [[ -z $new ]]; then
  echo "FAIL: no other director took $vip within ${bound_s} s" >&2
  exit 1
fi
if ((last_ok < kill_ms)); then
  echo "FAIL: the client was not answered after the power-off" >&2
  exit 1
fi
if ((gap > bound_s * 1000)); then
  echo "FAIL: the client went unanswered for $gap ms (bound ${bound_s} s)" >&2
  exit 1
fi
echo "ok: $vip moved from $old to $new; the client was answered again after $gap ms at most"
