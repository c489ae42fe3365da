#!/usr/bin/env bash
# Many idle connections over several Mist nodes on this machine, one message
# to all of them: RSS per node and the time until the last connection has it.
#
# usage: bench/scale-out.sh [--nodes 5] [--per-node 19983] [--backplane redis|nats]
#                           [--per-holder 10000] [--timeout 600] [--out DIR]
#                           [--mist-bin PATH]
#
# Starts redis-server (or nats-server) on a free port and --nodes release
# `mist --server --cluster ...` nodes, each with one tcp listener. Then, per
# node, ceil(per-node / per-holder) `mist bench conns --hold` processes, each
# from its own loopback source address (127.R.S.2, .3, ..., R and S picked
# at random for each run), which together
# open --per-node subscribed idle connections to that node (tag `bench`) and
# say when all of them are subscribed. Each node's VmRSS is read before any
# connection and once all are subscribed. Then `mist bench conns
# --subscribers 0` publishes one message on node 1 (one more connection
# there), and each holder reports when each of its connections had it,
# timed from the message's send stamp (one wall clock on one machine).
#
# Prints a Markdown table: per node RSS before and after, KiB per connection
# and open file descriptors; delivered (must be nodes x per-node); the time
# from the send to the last arrival (the slowest holder's); p50/p99/max over
# all connections (the holders' histograms merged). The reports, logs and
# summary stay in --out (default: a new directory under /tmp).
#
# A node holds its connections, listener, pollers, standard streams and
# backplane connection in one process's open-files limit (`ulimit -n`);
# node 1 also holds the publisher's connection. A node out of descriptors
# refuses new connections (a holder then fails and the script says so).
# Every wait is bounded by --timeout; everything started here is stopped on
# exit, however the script ends. Needs jq, ss, and redis-server or
# nats-server.
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=5
per_node=19983
backplane=redis
per_holder=10000
timeout=600
out=""
mist=""

die() { echo "scale-out: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --per-node) per_node="$2"; shift 2 ;;
    --backplane) backplane="$2"; shift 2 ;;
    --per-holder) per_holder="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --mist-bin) mist="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
for n in "$nodes" "$per_node" "$per_holder" "$timeout"; do
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt 0 ] || die "not a positive number: $n"
done
case "$backplane" in redis|nats) ;; *) die "--backplane is redis or nats" ;; esac
for tool in jq ss "${backplane}-server"; do
  command -v "$tool" >/dev/null || die "needs $tool"
done
if [ -z "$mist" ]; then
  nice cargo build --release -q -p mist
  mist=target/release/mist
fi
[ -x "$mist" ] || die "no mist binary at $mist"
mist="$(cd "$(dirname "$mist")" && pwd)/$(basename "$mist")"
if [ -z "$out" ]; then
  out="$(mktemp -d /tmp/mist-scale-out.XXXXXX)"
else
  mkdir -p "$out"
fi
# Descriptors this script was started with beyond the standard three (a
# terminal multiplexer's, a CI runner's) would be inherited by every node
# and count against its open-files limit: closed here, so that a node's
# limit is the same however the script is run.
for info in /proc/$$/fdinfo/*; do
  fd="${info##*/}"
  [ "$fd" -gt 2 ] || continue
  flags="$(awk '/^flags:/ { print $2 }' "$info" 2>/dev/null)" || continue
  # Close-on-exec (bash's own) is not inherited.
  if [ -n "$flags" ] && (( (8#$flags & 8#2000000) == 0 )); then
    exec {fd}>&-
  fi
done
holders_per_node=$(( (per_node + per_holder - 1) / per_holder ))
# Source addresses new to this run: the previous run's closed connections
# sit in TIME_WAIT for a minute on theirs, holding the ports, and binding
# a port next to tens of thousands of those is slow (a run right after
# another took 55 s instead of 8 to connect) or fails.
source_net="127.$(( RANDOM % 254 + 1 )).$(( RANDOM % 256 ))"
holders=$(( nodes * holders_per_node ))
[ "$holders" -le 250 ] || die "$holders holders need more than 250 source addresses"

# Everything started here, stopped on exit: first the nodes and holders
# (SIGTERM, then SIGKILL after 10 s), then the backplane; then checked gone.
backplane_pid=""
pids=()
forget() {
  local keep=() pid
  for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
  pids=("${keep[@]}")
}
stop_all() {
  local pid deadline
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$(( SECONDS + 10 ))
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  stop_all "${pids[@]}"
  [ -z "$backplane_pid" ] || stop_all "$backplane_pid"
  for pid in "${pids[@]}" $backplane_pid; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "scale-out: process $pid is still running" >&2
      status=1
    fi
  done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free port below the ephemeral range, so that no holder's connection
# can take it.
used_ports=" "
free_port() {
  local port
  for _ in $(seq 200); do
    port=$(( 20000 + RANDOM % 12000 ))
    if [[ "$used_ports" != *" $port "* ]] && [ -z "$(ss -Htln "sport = :$port")" ]; then
      used_ports+="$port "
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

# Waits until PID's log says NEEDLE; fails if PID exits or time is up.
wait_log() {
  local pid="$1" log="$2" needle="$3" deadline=$(( SECONDS + 30 ))
  until grep -q "$needle" "$log" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "process $pid exited: $(tail -5 "$log")"
    [ "$SECONDS" -lt "$deadline" ] || die "no \"$needle\" in $log within 30 s"
    sleep 0.1
  done
}

wait_port() {
  local port="$1" deadline=$(( SECONDS + 30 ))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || die "nothing listens on port $port after 30 s"
    sleep 0.1
  done
}

# How many nodes the node on PORT lists in `who` (its own connection).
nodes_seen() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
    printf '{"command":"who"}\n' >&3
    IFS= read -r -t 5 reply <&3 || exit 0
    jq -r '.data | fromjson | .nodes | length' <<<"$reply"
  ) 2>/dev/null
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
open_fds() { ls "/proc/$1/fd" | wc -l; }

echo "scale-out: $nodes nodes x $per_node connections over $backplane, $holders holders; files in $out" >&2
echo "scale-out: open-files limit $(ulimit -Sn) (hard $(ulimit -Hn)) for every process started here" >&2

bp_port=$(free_port)
if [ "$backplane" = redis ]; then
  redis-server --port "$bp_port" --bind 127.0.0.1 --save '' --appendonly no \
    >"$out/backplane.log" 2>&1 </dev/null &
else
  nats-server -a 127.0.0.1 -p "$bp_port" >"$out/backplane.log" 2>&1 </dev/null &
fi
backplane_pid=$!
wait_port "$bp_port"
cluster="$backplane://127.0.0.1:$bp_port"

node_pids=()
node_ports=()
for i in $(seq "$nodes"); do
  port=$(free_port)
  "$mist" --server --listeners "tcp://127.0.0.1:$port" --cluster "$cluster" \
    >"$out/node-$i.log" 2>&1 </dev/null &
  pids+=($!)
  node_pids+=($!)
  node_ports+=("$port")
done
for i in $(seq 0 $(( nodes - 1 ))); do
  wait_log "${node_pids[$i]}" "$out/node-$(( i + 1 )).log" "listening on"
done
# Every node hears every other before the first subscription.
deadline=$(( SECONDS + 30 ))
for port in "${node_ports[@]}"; do
  until [ "$(nodes_seen "$port")" = "$nodes" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "the nodes did not all see each other within 30 s"
    sleep 0.2
  done
done

rss_before=()
for pid in "${node_pids[@]}"; do rss_before+=("$(rss_kib "$pid")"); done

holder_pids=()
holder_names=()
started=$(date +%s.%N)
h=0
for i in $(seq 0 $(( nodes - 1 ))); do
  for j in $(seq 0 $(( holders_per_node - 1 ))); do
    # per_node split as evenly as it goes.
    count=$(( per_node / holders_per_node + (j < per_node % holders_per_node ? 1 : 0) ))
    name="holder-$(( i + 1 ))-$(( j + 1 ))"
    "$mist" bench conns --hold --json \
      --host "127.0.0.1:${node_ports[$i]}" --subscribers "$count" \
      --source-addrs "$source_net.$(( h + 2 ))" --duration "$timeout" \
      --ready-file "$out/$name.ready" \
      >"$out/$name.json" 2>"$out/$name.err" </dev/null &
    pids+=($!)
    holder_pids+=($!)
    holder_names+=("$name")
    h=$(( h + 1 ))
  done
done

deadline=$(( SECONDS + timeout ))
for k in "${!holder_pids[@]}"; do
  name="${holder_names[$k]}"
  until [ -e "$out/$name.ready" ]; do
    if ! kill -0 "${holder_pids[$k]}" 2>/dev/null; then
      die "$name ended before it was ready: $(tail -3 "$out/$name.err")"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "$name not ready within $timeout s"
    sleep 0.2
  done
done
connect_seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

rss_after=()
fds=()
for pid in "${node_pids[@]}"; do
  rss_after+=("$(rss_kib "$pid")")
  fds+=("$(open_fds "$pid")")
done

"$mist" bench conns --subscribers 0 --json --host "127.0.0.1:${node_ports[0]}" \
  >"$out/publish.json" 2>"$out/publish.err" </dev/null \
  || die "publishing failed: $(cat "$out/publish.err")"

deadline=$(( SECONDS + timeout ))
for k in "${!holder_pids[@]}"; do
  while kill -0 "${holder_pids[$k]}" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || die "${holder_names[$k]} did not report within $timeout s"
    sleep 0.1
  done
  status=0
  wait "${holder_pids[$k]}" || status=$?
  forget "${holder_pids[$k]}"
  [ "$status" -eq 0 ] || die "${holder_names[$k]} failed: $(tail -3 "$out/${holder_names[$k]}.err")"
done

# The holders' reports, merged: counts add up, the time to reach all is the
# slowest holder's last arrival, percentiles come from the merged histogram.
reports=()
for name in "${holder_names[@]}"; do reports+=("$out/$name.json"); done
jq -s '
  ([.[].latency_histogram_us[]] | group_by(.[0]) | map([.[0][0], (map(.[1]) | add)])) as $h
  | ($h | map(.[1]) | add // 0) as $n
  | def pct(q): ($n * q | ceil) as $rank
      | reduce $h[] as $b ({seen: 0, at: null};
          if .at == null then .seen += $b[1] | (if .seen >= $rank then .at = $b[0] else . end) else . end)
      | .at;
  { expected: (map(.deliveries_expected) | add),
    delivered: (map(.delivered) | add),
    errors: (map(.errors) | add),
    first_error: (map(.first_error) | map(select(. != null)) | first),
    reach_all_us: (map(.latency.max_us) | max),
    p50_us: pct(0.5), p99_us: pct(0.99), samples: $n }' "${reports[@]}" >"$out/merged.json"

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
{
  echo "$nodes nodes x $per_node idle subscribed TCP connections over $backplane-server" \
    "($(( nodes * per_node )) in all, $holders holder processes), one publish on node 1:"
  echo
  echo "| node | RSS before | RSS with its connections | KiB per connection | open files (limit $(ulimit -Sn)) |"
  echo "|---|---|---|---|---|"
  total_before=0; total_after=0
  for i in $(seq 0 $(( nodes - 1 ))); do
    per=$(awk -v a="${rss_after[$i]}" -v b="${rss_before[$i]}" -v n="$per_node" \
      'BEGIN { printf "%.2f", (a - b) / n }')
    echo "| $(( i + 1 )) | $(mib "${rss_before[$i]}") MiB | $(mib "${rss_after[$i]}") MiB | $per | ${fds[$i]} |"
    total_before=$(( total_before + rss_before[i] )); total_after=$(( total_after + rss_after[i] ))
  done
  echo "| all | $(mib "$total_before") MiB | $(mib "$total_after") MiB |" \
    "$(awk -v a="$total_after" -v b="$total_before" -v n="$(( nodes * per_node ))" \
      'BEGIN { printf "%.2f", (a - b) / n }') | |"
  echo
  jq -r --arg connect "$connect_seconds" '
    "| delivered | send → last arrival | p50 | p99 | connected and subscribed in |",
    "|---|---|---|---|---|",
    "| \(.delivered) of \(.expected) | \(.reach_all_us / 1000 | . * 10 | round / 10) ms | \(.p50_us / 1000 | . * 10 | round / 10) ms | \(.p99_us / 1000 | . * 10 | round / 10) ms | \($connect) s |",
    (if .errors > 0 then "\n\(.errors) connection(s) failed; the first: \(.first_error)" else empty end)
  ' "$out/merged.json"
} | tee "$out/summary.md"

delivered=$(jq .delivered "$out/merged.json")
[ "$delivered" -eq $(( nodes * per_node )) ] \
  || die "delivered $delivered, not $(( nodes * per_node )) (see $out)"
