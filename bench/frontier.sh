#!/usr/bin/env bash
# The autoscaling frontier on the NAB traces: `tidewatch simulate --sweep` per trace, one markdown row each.
# Usage: bench/frontier.sh [extra simulate flags...]   (NAB=path/to/nab/data, BIN=path/to/tidewatch)
set -euo pipefail
NAB=${NAB:-../shared/data/nab/data}
BIN=${BIN:-target/debug/tidewatch}
TRACES=(realKnownCause/nyc_taxi realAWSCloudwatch/elb_request_count_8c0756
  realTweets/Twitter_volume_{AAPL,AMZN,CRM,CVS,FB,GOOG,IBM,KO,PFE,UPS})
echo "| series | HPA 0.5 / 0.6 / 0.7 / 0.8 / 0.9 (replica-h, viol. min) | Tidewatch 0.7 | HPA at the same replica-h | on or below | oracle | gap closed |"
echo "|---|---|---|---|---|---|---|"
for t in "${TRACES[@]}"; do
  "$BIN" simulate --trace "$NAB/$t.csv" --sweep --json "$@" | tail -1 | python3 -c '
import json, sys
f = json.load(sys.stdin)
name = sys.argv[1].split("/")[-1]
row = lambda p: "%.0f, %d" % (p["replica_hours"], p["slo_violation_minutes"])
gap = "n/a" if f["gap_closed"] is None else "%.0f %%" % (100 * f["gap_closed"])
print("| %s | %s | %s | %.0f | %s | %s | %s |" % (name, " / ".join(row(p) for p in f["hpa"]), row(f["point"]),
      f["hpa_violations_at_same_cost"], "yes" if f["on_or_below"] else "no", row(f["oracle"]), gap))
' "$t"
done
