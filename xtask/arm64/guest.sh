#!/bin/sh
# The arm64 check, run as root by /init: fusetrace's version, its doctor, then
# the reference daemon serving a mixed load while `stats` (counted in the
# kernel) and `trace` (default backend: what a user gets) watch it. Each
# opcode's count must be what the daemon served. Last line: the verdict.
OPS=2000
fail() { echo "arm64: FAIL: $*"; exit 1; }
# wait_until SECONDS COMMAND...: true once COMMAND is.
wait_until() {
    n=$(($1 * 10)); shift
    until "$@"; do n=$((n - 1)); [ "$n" -gt 0 ] || return 1; sleep 0.1; done
}
mounted() { grep -q ' /mnt/ref fuse' /proc/mounts; }
tracing() { grep -q '^fusetrace: tracing' "$1"; }
written() { [ "$(grep -c 'counts written' /tmp/daemon.out)" -gt "$1" ]; }
# The daemon's counts so far, into file $1 (SIGUSR1 makes it write them).
snapshot() {
    n=$(grep -c 'counts written' /tmp/daemon.out)
    kill -USR1 "$DPID"
    wait_until 30 written "$n" || fail "the daemon wrote no counts"
    cp /tmp/counts.json "$1"
}

echo "== kernel $(uname -r)"
fusetrace --version || fail "fusetrace --version exited $?"
fusetrace doctor || fail "fusetrace doctor exited $?"

mkdir -p /mnt/ref
fusetrace daemon /mnt/ref --threads 2 --ttl 600s --counts-file /tmp/counts.json >/tmp/daemon.out 2>&1 &
DPID=$!
wait_until 60 mounted || fail "the daemon did not mount: $(cat /tmp/daemon.out)"
fusetrace stats --format json --mount /mnt/ref >/tmp/stats.json 2>/tmp/stats.err &
SPID=$!
fusetrace trace --format json --mount /mnt/ref >/tmp/trace.json 2>/tmp/trace.err &
TPID=$!
wait_until 120 tracing /tmp/stats.err || fail "stats did not start: $(cat /tmp/stats.err)"
wait_until 120 tracing /tmp/trace.err || fail "trace did not start: $(cat /tmp/trace.err)"
# Served before the tracers were attached: not theirs to see.
snapshot /tmp/before.json
fusetrace load /mnt/ref --workload mixed --ops "$OPS" --jobs 2 || fail "load exited $?"
# The daemon stops first (it unmounts and writes its counts at exit), as
# in the x86 tests: FORGETs that follow the load are then in both counts.
kill -TERM "$DPID"
wait "$DPID" || fail "the daemon exited $?: $(cat /tmp/daemon.out)"
kill -INT "$SPID" "$TPID"
wait "$SPID" || fail "stats exited $?: $(cat /tmp/stats.err)"
wait "$TPID" || fail "trace exited $?: $(cat /tmp/trace.err)"
echo "== stats: $(tail -n1 /tmp/stats.err)"
echo "== trace: $(tail -n1 /tmp/trace.err)"

# Where the take is a kprobe (kernels without arm64 fentry for modules, like
# 6.1) trace sees requests only, and says so: no FORGETs to compare there.
forgets=1
grep -q 'requests only' /tmp/trace.err && forgets=0

# Per opcode: served (the daemon's counts at its exit less those before),
# stats' whole-run count, trace's records (a request split in two counts twice).
{
    sed 's/[{}" ]//g' /tmp/before.json | tr ',' '\n' | sed 's/^/before:/'
    sed 's/[{}" ]//g' /tmp/counts.json | tr ',' '\n' | sed 's/^/after:/'
    grep '"whole run"' /tmp/stats.json | tail -n1 | sed 's/{"complete":/\n/g' |
        sed -n 's/.*"count":\([0-9]*\),.*"opcode":"\([A-Z_0-9]*\)".*/stats:\2:\1/p'
    grep -v '^{"summary"' /tmp/trace.json | sed -n 's/.*"opcode":"\([A-Z_0-9]*\)".*/trace:\1:1/p'
} | awk -F: -v min="$OPS" -v forgets="$forgets" '
    $1 == "before" { b[$2] = $3 } $1 == "after" { a[$2] = $3; ops[$2] = 1 }
    $1 == "stats" { s[$2] = $3; ops[$2] = 1 } $1 == "trace" { t[$2]++; ops[$2] = 1 }
    END {
        printf "%-14s %8s %8s %8s\n", "OP", "daemon", "stats", "trace"
        for (op in ops) {
            d = a[op] - b[op]; total += d
            # stats counts requests from send to end: FORGET and
            # BATCH_FORGET get no reply, so they never end and are not its.
            nostats = op == "FORGET" || op == "BATCH_FORGET"
            notrace = nostats && !forgets
            ok = (notrace || d == t[op] + 0) && (nostats || d == s[op] + 0)
            printf "%-14s %8d %8s %8s%s\n", op, d, nostats ? "-" : s[op] + 0,
                notrace ? "-" : t[op] + 0, ok ? "" : "  <-- differs"
            if (!ok) bad = bad " " op
        }
        if (total < min) { print "arm64: FAIL: the daemon served only " total " messages"; exit 1 }
        if (bad != "") { print "arm64: FAIL: counts differ for" bad; exit 1 }
        print "arm64: PASS"
    }'
