# shellcheck shell=bash
# Shared by the scenario scripts (failover.sh, upgrade.sh, partition.sh);
# sourced, not run. Everything goes through Ansible and the inventory given
# with -i, so the scripts work the same against the Vagrant lab and against
# the VMs of `cargo xtask test-deploy`:
#   - group `directors`: the director hosts (SSH, root or become);
#   - group `clients`: the first host runs the client loop (curl);
#   - variable `demo_vip_url` (seen by that client): the URL the loop asks.
# Needs on the control machine: ansible, ansible-inventory, python3.

scenario_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$scenario_dir/../.." && pwd)
ansible_dir="$repo_dir/deploy/ansible"
export ANSIBLE_CONFIG="${ANSIBLE_CONFIG:-$ansible_dir/ansible.cfg}"
# A powered-off host must not hold a scenario up for long.
export ANSIBLE_TIMEOUT="${ANSIBLE_TIMEOUT:-5}"

log() { printf '%s %s\n' "$(date -u +%H:%M:%S.%3N)" "$*" >&2; }
die() {
  log "error: $*"
  exit 2
}

# parse_inventory_arg "$@": sets $inventory (absolute) and $rest (the other
# arguments, an array).
parse_inventory_arg() {
  inventory=""
  rest=()
  while (($#)); do
    case "$1" in
    -i | --inventory)
      [[ $# -ge 2 ]] || die "-i needs an inventory"
      inventory=$2
      shift 2
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      rest+=("$1")
      shift
      ;;
    esac
  done
  [[ -n $inventory ]] || {
    usage >&2
    exit 2
  }
  [[ -e $inventory ]] || die "no inventory at $inventory"
  inventory=$(realpath "$inventory")
}

# group_hosts GROUP: the group's hosts, one a line, in inventory order.
group_hosts() {
  ansible-inventory -i "$inventory" --list 2>/dev/null | python3 -c '
import json, sys
inv = json.load(sys.stdin)
def hosts(group, seen):
    out = []
    g = inv.get(group, {})
    for h in g.get("hosts", []):
        if h not in seen:
            seen.add(h)
            out.append(h)
    for child in g.get("children", []):
        out += hosts(child, seen)
    return out
print("\n".join(hosts(sys.argv[1], set())))
' "$1"
}

# host_var HOST VAR: a variable as the host sees it (host and group vars);
# a string as it is, anything else as JSON.
host_var() {
  ansible-inventory -i "$inventory" --host "$1" 2>/dev/null | python3 -c '
import json, sys
v = json.load(sys.stdin).get(sys.argv[1])
print("" if v is None else v if isinstance(v, str) else json.dumps(v))
' "$2"
}

# adhoc PATTERN MODULE ARGS [ansible options...]: runs an ad hoc module and
# prints one line per host: HOST<TAB>STATUS<TAB>JSON, where STATUS is ok,
# failed or unreachable and JSON the module's result.
adhoc() {
  local pattern=$1 module=$2 args=$3
  shift 3
  ANSIBLE_LOAD_CALLBACK_PLUGINS=1 ANSIBLE_STDOUT_CALLBACK=ansible.posix.json \
    ansible "$pattern" -i "$inventory" -m "$module" -a "$args" "$@" 2>/dev/null |
    python3 -c '
import json, sys
text = sys.stdin.read()
try:
    doc = json.loads(text[text.index("{"):])
except ValueError:
    sys.exit(0)
for play in doc.get("plays", []):
    for task in play.get("tasks", []):
        for host, res in task.get("hosts", {}).items():
            if res.get("unreachable"):
                status = "unreachable"
            elif res.get("failed") or res.get("rc", 0) != 0:
                status = "failed"
            else:
                status = "ok"
            print(host, status, json.dumps(res), sep="\t")
' || true
}

# statuses [ansible options...]: `director status -o json` on every director
# that answers: HOST<TAB>STATUS-JSON lines.
statuses() {
  adhoc directors ansible.builtin.command "director status -o json" --become "$@" |
    python3 -c '
import json, sys
for line in sys.stdin:
    host, status, res = line.rstrip("\n").split("\t", 2)
    if status != "ok":
        continue
    try:
        st = json.loads(json.loads(res)["stdout"])
    except (ValueError, KeyError):
        continue
    print(host, json.dumps(st), sep="\t")
'
}

# vip_owners VIP [ansible options...]: for each director that answers,
# HOST<TAB>OWNER<TAB>HELD, where OWNER is the VIP's owner as that director
# sees it (its name, or "-") and HELD whether this director holds the VIP.
vip_owners() {
  local vip=$1
  shift
  statuses "$@" | python3 -c '
import json, sys
vip = sys.argv[1]
for line in sys.stdin:
    host, st = line.rstrip("\n").split("\t", 1)
    st = json.loads(st)
    for v in st.get("vips", []):
        if v.get("vip") == vip:
            print(host, v.get("owner_name") or "-", "yes" if v.get("held_here") else "no", sep="\t")
            break
    else:
        print(host, "-", "no", sep="\t")
' "$vip"
}

# The client loop: on the first host of `clients`, curl the URL every
# ~100 ms, each request given TIMEOUT_S seconds (default 1), one line per
# request: UNIX_MS ok|fail TOOK_MS.
client_host=""
client_dir=""

client_start() {
  local url=$1 timeout=${2:-1}
  client_host=$(group_hosts clients | head -n 1)
  [[ -n $client_host ]] || die "the inventory has no host in the group clients"
  client_dir="/tmp/director-scenario-$$-$(date +%s)"
  local out
  out=$(adhoc "$client_host" ansible.builtin.script "$scenario_dir/client-loop.sh start $client_dir $url $timeout")
  [[ $(cut -f2 <<<"$out") == ok ]] || die "could not start the client loop on $client_host: $out"
  log "client loop on $client_host asks $url every 100 ms, ${timeout} s timeout (log $client_dir/log)"
}

# client_stop: stops the loop and prints its log (UNIX_MS ok|fail lines).
client_stop() {
  [[ -n $client_dir ]] || return 0
  local out
  out=$(adhoc "$client_host" ansible.builtin.script "$scenario_dir/client-loop.sh stop $client_dir")
  client_dir=""
  python3 -c '
import json, sys
for line in sys.stdin:
    host, status, res = line.rstrip("\n").split("\t", 2)
    sys.stdout.write(json.loads(res).get("stdout", ""))
' <<<"$out"
}

# client_summary < LOG: "requests N failed N longest_gap_ms N slow N
# slowest_ms N last_ok_ms N"; the gap is the longest time between the starts
# of two answered requests, slow counts answers that took over 1 s (a SYN
# the client's TCP had to send again), slowest is the longest answered one.
client_summary() {
  python3 -c '
import sys
rows = []
for line in sys.stdin:
    parts = line.split()
    if len(parts) >= 2 and parts[1] in ("ok", "fail"):
        took = int(parts[2]) if len(parts) > 2 else 0
        rows.append((int(parts[0]), parts[1], took))
oks = [(t, d) for t, r, d in rows if r == "ok"]
fails = [t for t, r, _ in rows if r == "fail"]
gap = 0
for (a, _), (b, _) in zip(oks, oks[1:]):
    gap = max(gap, b - a)
print("requests", len(rows), "failed", len(fails), "longest_gap_ms", gap,
      "slow", sum(1 for _, d in oks if d > 1000),
      "slowest_ms", max((d for _, d in oks), default=0),
      "last_ok_ms", oks[-1][0] if oks else 0)
'
}

# summary_field SUMMARY NAME: one number out of client_summary's line.
summary_field() {
  awk -v k="$2" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }' <<<"$1"
}

now_ms() { date +%s%3N; }
