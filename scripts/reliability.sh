#!/usr/bin/env bash
# The long reliability run (not part of the default test run; takes several minutes):
#   - a storm of 1,000 threads, 10 M operations, checked against a model, with parking_lot's
#     deadlock detector on;
#   - 10,000 concurrent histories checked for linearizability;
#   - faults injected at every Nth write or fsync (N = 1..120): write error, fsync error,
#     disk full, slow disk;
#   - 100 SIGKILLs of a writer in Synced mode;
#   - 1 M single-record tamperings of an HMAC trail and 600 k garbage inputs for the verifier;
#   - 10^5 random multi-guard histories on 8 threads: every lock cycle refused, none timing out.
# Prints a summary table and writes it to target/reliability/summary.md.
#
#   scripts/reliability.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export MAPWRAPPER_LONG=1
export MW_AUDIT_CRASH_REPS="${MW_AUDIT_CRASH_REPS:-100}"
out=target/reliability
mkdir -p "$out"
log="$out/long-run.log"
: >"$log"

status=0
run() {
    local name=$1
    shift
    local started=$SECONDS
    if "$@" >>"$log" 2>&1; then
        echo "$name PASS $((SECONDS - started))" >>"$out/status"
    else
        echo "$name FAIL $((SECONDS - started))" >>"$out/status"
        status=1
    fi
}
: >"$out/status"
echo "building (release)…" >&2
cargo test --release --all-features --no-run >>"$log" 2>&1 || { echo "build failed; see $log" >&2; exit 3; }
echo "running; log in $log" >&2
run storm cargo test --release --all-features --test reliability_core a_thousand_threads -- --nocapture
run linearizability cargo test --release --all-features --test reliability_core small_concurrent -- --nocapture
run faults cargo test --release --all-features --test reliability_audit faults_at_every_nth -- --nocapture
run panics cargo test --release --all-features --test reliability_audit panicking_closures -- --nocapture
run fuzz cargo test --release --all-features --test reliability_audit the_verifier_catches -- --nocapture
run crash cargo test --release -p map-wrapper --all-features --test audit_crash
run cycles cargo test --release --all-features --test deadlock_cycles a_storm_of -- --nocapture

field() { grep -o "$1=[0-9]*" "$log" | tail -1 | cut -d= -f2; }
row() { grep "^$1 " "$out/status" | awk '{print $2" ("$3" s)"}'; }
{
    echo "| check | result | figures |"
    echo "|---|---|---|"
    echo "| storm: 1,000 threads at once vs a model, deadlock detector on | $(row storm) | $(field storm_ops) operations, $(field storm_threads) threads |"
    echo "| linearizability (Wing–Gong, per key) | $(row linearizability) | $(field histories) histories, $(field overlapping) overlapping operations |"
    echo "| audit faults at every Nth write/fsync | $(row faults) | $(field runs) runs ($(field faulted) with the sink failed), $(field acked) acknowledged ops, $(field refused) refused, records lost: $(field records_lost) |"
    echo "| panicking user closures | $(row panics) | update, alter, retain, entry |"
    echo "| verifier fuzz (HMAC trail) | $(row fuzz) | $(field tamperings) tamperings, $(field garbage) garbage inputs, missed: $(field missed) |"
    echo "| SIGKILL crash loop (Synced) | $(row crash) | $(grep -o 'audit_crash: [0-9]* passed' "$log" | tail -1 | grep -o '[0-9]*') kills, every acknowledged op found |"
    echo "| lock cycles across threads: random multi-guard histories, 8 threads, 2 maps | $(row cycles) | $(field cycle_histories) histories, $(field cycles_refused) cycles refused (each checked against recorded holds), timeouts: $(field cycle_timeouts) |"
} | tee "$out/summary.md"
exit $status
