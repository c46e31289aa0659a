#!/bin/sh
# The client loop of the scenario scripts, run on the client host by
# Ansible's `script` module (so it is copied there each time).
#   client-loop.sh start DIR URL [TIMEOUT_S]: start asking URL in the
#     background, one request every ~100 ms, each given TIMEOUT_S seconds
#     (default 1) and logged to DIR/log as "UNIX_MS ok|fail TOOK_MS";
#     returns once the first is logged.
#   client-loop.sh stop DIR: stop it and print DIR/log; removes DIR.
set -eu
cmd=$1
dir=$2

case "$cmd" in
start)
  url=$3
  timeout=${4:-1}
  command -v curl >/dev/null || {
    echo "client-loop: curl is missing on $(hostname)" >&2
    exit 1
  }
  mkdir -p "$dir"
  cat >"$dir/loop.sh" <<'EOF'
#!/bin/sh
dir=$1
url=$2
timeout=$3
while [ ! -e "$dir/stop" ]; do
  t=$(date +%s%3N)
  if curl -fsS -o /dev/null --max-time "$timeout" "$url" 2>/dev/null; then
    r=ok
  else
    r=fail
  fi
  echo "$t $r $(($(date +%s%3N) - t))" >>"$dir/log"
  sleep 0.1
done
rm -f "$dir/pid"
EOF
  setsid sh "$dir/loop.sh" "$dir" "$url" "$timeout" </dev/null >/dev/null 2>&1 &
  echo $! >"$dir/pid"
  i=0
  while [ ! -s "$dir/log" ]; do
    i=$((i + 1))
    if [ "$i" -gt 300 ]; then
      echo "client-loop: no request logged after 30 s" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo started
  ;;
stop)
  touch "$dir/stop"
  i=0
  while [ -e "$dir/pid" ] && [ "$i" -lt 50 ]; do
    i=$((i + 1))
    sleep 0.1
  done
  if [ -e "$dir/pid" ]; then kill "$(cat "$dir/pid")" 2>/dev/null || true; fi
  cat "$dir/log"
  rm -rf "$dir"
  ;;
*)
  echo "usage: client-loop.sh start DIR URL [TIMEOUT_S] | stop DIR" >&2
  exit 2
  ;;
esac
