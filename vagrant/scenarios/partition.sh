#!/usr/bin/env bash
# A director cut off from its peers must not take the VIP.
#
#   partition.sh -i INVENTORY [--vip A.B.C.D] [--seconds N] [--host NAME]
#
# Picks a director that neither holds the VIP nor leads the Raft group (or
# --host; failing that, one that does not hold the VIP), and on it drops
# everything to and from the other directors' addresses with nftables (a
# table of its own, `inet director_scenario_partition`, removed afterwards;
# SSH from the control machine is not touched unless it comes from a
# director's address). For --seconds (default 20) it asks every director
# about the VIP every second while the client loop on the first host of
# `clients` asks `demo_vip_url` every ~100 ms: the cut-off director must
# never hold the VIP, no two directors may hold it at once, and the client
# must keep being served. Then it removes the table and waits (at most 60 s)
# until the director has rejoined: it sees the same leader as the others and
# that leader has heard from it within one lease (`director_timing.lease_ms`,
# default 300).
# Exit 0 when all of that held; 1 otherwise; 2 for a setup error.
# Cutting the leader off (--host LEADER) is a harder case: the owner cannot
# renew its lease until the others have elected a new leader, and with the
# VMs' relaxed timing that left the VIP unanswered for about 2.5 s (the
# client's requests then fail; the VIP still never has two owners).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# shellcheck disable=SC2317 # called by parse_inventory_arg
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

parse_inventory_arg "$@"
vip=""
seconds=20
cut=""
set -- "${rest[@]+"${rest[@]}"}"
while (($#)); do
  case "$1" in
  --vip) vip=$2; shift 2 ;;
  --seconds) seconds=$2; shift 2 ;;
  --host) cut=$2; shift 2 ;;
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

mapfile -t directors < <(group_hosts directors)
((${#directors[@]} >= 2)) || die "the group directors needs two hosts or more"
owners=$(vip_owners "$vip")
owner=$(awk -F'\t' '$3 == "yes" { print $1; exit }' <<<"$owners")
[[ -n $owner ]] || die "no director holds $vip"
leader=$(statuses | python3 -c '
import json, sys
for line in sys.stdin:
    host, st = line.rstrip("\n").split("\t", 1)
    name = json.loads(st)["cluster"].get("leader_name")
    if name:
        print(name)
        break
')
if [[ -z $cut ]]; then
  for d in "${directors[@]}"; do
    if [[ $d != "$owner" && $d != "$leader" ]]; then
      cut=$d
      break
    fi
  done
fi
if [[ -z $cut ]]; then
  for d in "${directors[@]}"; do
    if [[ $d != "$owner" ]]; then
      cut=$d
      break
    fi
  done
fi
[[ $cut != "$owner" ]] || die "$cut holds $vip: pick a director that does not"
peers=()
for d in "${directors[@]}"; do
  [[ $d == "$cut" ]] && continue
  a=$(host_var "$d" director_address)
  [[ -n $a ]] || die "director_address is not set for $d"
  peers+=("$a")
done
peer_set=$(IFS=,; echo "${peers[*]}")
family=ip
[[ $peer_set == *:* ]] && family=ip6
# One lease: how recently the leader must have heard from a member.
lease_ms=$(host_var "$cut" director_timing | python3 -c '
import json, sys
text = sys.stdin.read().strip()
print((json.loads(text) if text else {}).get("lease_ms", 300))
')
log "$vip is held by $owner, the leader is ${leader:-unknown}; cutting $cut off from ${peer_set}"

table=director_scenario_partition
heal() {
  adhoc "$cut" ansible.builtin.command "nft delete table inet $table" --become >/dev/null
}
trap 'heal; client_stop >/dev/null 2>&1 || true' EXIT

client_start "$url"
sleep 2

out=$(adhoc "$cut" ansible.builtin.shell "nft -f - <<'NFT'
table inet $table {
  chain input { type filter hook input priority -10; $family saddr { $peer_set } drop; }
  chain output { type filter hook output priority -10; $family daddr { $peer_set } drop; }
}
NFT" --become)
[[ $(cut -f2 <<<"$out") == ok ]] || die "could not add the nftables table on $cut: $out"
log "partitioned"

two_owners=0
cut_held=0
end=$(($(date +%s) + seconds))
while (($(date +%s) < end)); do
  owners=$(vip_owners "$vip")
  holders=$(awk -F'\t' '$3 == "yes" { print $1 }' <<<"$owners" | sort -u | paste -sd, -)
  log "holding $vip: ${holders:-none}"
  if [[ $holders == *,* ]]; then two_owners=$((two_owners + 1)); fi
  if [[ ,$holders, == *",$cut,"* ]]; then cut_held=$((cut_held + 1)); fi
  sleep 1
done

log "healing"
heal
trap 'client_stop >/dev/null 2>&1 || true' EXIT
rejoined=0
deadline=$(($(date +%s) + 60))
while (($(date +%s) < deadline)); do
  if statuses | python3 -c '
import json, sys
cut = sys.argv[1]
st = {}
for line in sys.stdin:
    host, s = line.rstrip("\n").split("\t", 1)
    st[host] = json.loads(s)
if cut not in st:
    sys.exit(1)
leaders = {s["cluster"].get("leader") for s in st.values()}
if len(leaders) != 1 or None in leaders:
    sys.exit(1)
leader = leaders.pop()
lead = [s for s in st.values() if s["director"]["id"] == leader]
if not lead:
    sys.exit(1)
me = st[cut]["director"]["id"]
lease = int(sys.argv[2])
for m in lead[0]["cluster"]["members"]:
    if m["id"] == me:
        c = m.get("last_contact_ms")
        sys.exit(0 if m["id"] == leader or (c is not None and c <= lease) else 1)
sys.exit(1)
' "$cut" "$lease_ms"; then
    rejoined=1
    break
  fi
  sleep 2
done
log "rejoined: $([[ $rejoined == 1 ]] && echo yes || echo no)"
sleep 1
trap - EXIT
loglines=$(client_stop)
summary=$(client_summary <<<"$loglines")
requests=$(summary_field "$summary" requests)
failed=$(summary_field "$summary" failed)

echo "owner:            $owner"
echo "cut off:          $cut (${seconds} s)"
echo "two owners seen:  $two_owners times"
echo "cut-off held VIP: $cut_held times"
echo "rejoined:         $([[ $rejoined == 1 ]] && echo yes || echo no)"
echo "requests:         $requests"
echo "failed:           $failed"
fail=0
((two_owners == 0)) || { echo "FAIL: two directors held $vip at once" >&2; fail=1; }
((cut_held == 0)) || { echo "FAIL: the cut-off director held $vip" >&2; fail=1; }
((rejoined == 1)) || { echo "FAIL: $cut did not rejoin within 60 s" >&2; fail=1; }
((failed == 0)) || { echo "FAIL: $failed of $requests requests failed" >&2; fail=1; }
((fail == 0)) && echo "ok: $cut was cut off and healed; $vip stayed with one director and the client was served"
exit "$fail"
