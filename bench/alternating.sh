# shellcheck shell=bash
# The rounds of an alternating bench (bench/admission-alternating,
# bench/webhooks-alternating): every side's server runs at once, and the load goes
# to each in turn in short slices, so that the sides of one round are seconds
# apart and a ratio within the round leaves the machine's drift out. Sourced:
#
#   alternate ROUNDS SLICE SIDE...
#       calls the caller's `slice SIDE ROUND DURATION`: once per side with ROUND
#       "warm" for 1s, then ROUNDS rounds of one SLICE per side, the order
#       rotating from one round to the next so that no side always follows the
#       same one. bench/paired.py reads the rounds' figures.
alternate() {
  local rounds=$1 duration=$2; shift 2
  local sides=("$@") n=$# side round k
  for side in "${sides[@]}"; do slice "$side" warm 1s; done
  for round in $(seq "$rounds"); do
    for k in $(seq 0 $((n - 1))); do
      slice "${sides[$(( (round + k) % n ))]}" "$round" "$duration"
    done
    echo "round $round of $rounds done" >&2
  done
}
