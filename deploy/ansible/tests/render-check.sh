#!/bin/sh
# Renders director.yaml for every director of the example inventory (or of
# the inventory given as $1), checks each file with `director config check`
# and compares the example's with the lab's tests/lab/d1..d3.yaml; renders
# each director's systemd unit too (ExecStart pointing at the binary checked
# with) and checks it with `systemd-analyze verify` where that is installed.
# Needs ansible and a director binary ($DIRECTOR, else `director` on PATH,
# else the checkout's target/release or target/debug one); touches no host.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$here/../.." && pwd)
inventory=${1:-$here/inventory/example/hosts.yml}

if [ -z "${DIRECTOR:-}" ]; then
    for c in "$(command -v director || true)" "$repo/target/release/director" "$repo/target/debug/director"; do
        if [ -n "$c" ] && [ -x "$c" ]; then DIRECTOR=$c; break; fi
    done
fi
if [ -z "${DIRECTOR:-}" ]; then
    echo "render-check: no director binary (set DIRECTOR=/path/to/director)" >&2
    exit 2
fi
DIRECTOR=$(cd "$(dirname "$DIRECTOR")" && pwd)/$(basename "$DIRECTOR")

compare=""
if [ "$inventory" = "$here/inventory/example/hosts.yml" ]; then
    compare=$repo/tests/lab
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cd "$here"
ANSIBLE_CONFIG=$here/ansible.cfg ansible-playbook -i "$inventory" tests/render.yml \
    -e "director_render_dir=$out" \
    -e "director_render_check_binary=$DIRECTOR" \
    -e "director_binary_path=$DIRECTOR" \
    -e "director_render_compare_dir=$compare"
configs=0
for f in "$out"/*.yaml; do
    "$DIRECTOR" config check "$f"
    configs=$((configs + 1))
done
units=""
if command -v systemd-analyze >/dev/null; then
    for f in "$out"/*.service; do
        # Warnings about the unit (an unknown key, a type this systemd
        # lacks) fail too; those about other units of the host do not.
        report=$(systemd-analyze verify "$f" 2>&1) || { echo "$report" >&2; exit 1; }
        if printf '%s\n' "$report" | grep -F "$(basename "$f")" >&2; then exit 1; fi
    done
    units=", units verified"
fi
echo "render-check: $configs configuration(s) rendered and valid$units"
