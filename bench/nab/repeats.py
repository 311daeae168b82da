#!/usr/bin/env python3
"""Does a repeat of a known incident page? A probe of the detector on a synthetic series.

The held-out cloud-service corpus of issue 12 found the detector weakest on series with many short
incidents (hourly crash and error rates): once a series has seen a spike, the next one is neither a new
extreme nor, after a few, a surprise. This writes a one-file corpus in NAB's layout (an hourly series: a
daily cycle of +-2 around 5 with uniform noise of +-1.5, seeded, and five incidents 300 rows apart that add
25 for 1, 2, 3, 1 and 2 rows, each labelled with a window of 5 rows either side), scores it with `tidewatch
nab --write-results`, and prints each incident's highest score, the highest score outside them, and which
reach the server's threshold (`health::NAB_THRESHOLD`, read from analyzer/src/health.rs unless given with
--threshold).

    bench/nab/repeats.py [--bin target/release/tidewatch] [--threshold T] [--param KEY=VALUE ...]

NAB's unit-less series run without the server's resolution, so these are `tidewatch nab`'s scores.
"""

import argparse
import csv
import datetime
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROFILES = os.path.join(ROOT, "..", "shared", "data", "nab", "config", "profiles.json")
STARTS = [500, 800, 1100, 1400, 1700]
LENGTHS = [1, 2, 3, 1, 2]
ROWS = 2000
HEALTH = os.path.join(ROOT, "analyzer", "src", "health.rs")
WARM = 150  # rows before the scores outside the incidents are read (the detector's warm-up and first range)


def corpus(root):
    """The one-file corpus under `root`."""
    random.seed(1)
    t0 = datetime.datetime(2026, 1, 1)
    stamp = lambda i, fmt="%Y-%m-%d %H:%M:%S": (t0 + datetime.timedelta(hours=i)).strftime(fmt)  # noqa: E731
    os.makedirs(os.path.join(root, "data", "synthetic"))
    os.makedirs(os.path.join(root, "labels"))
    os.makedirs(os.path.join(root, "config"))
    shutil.copy(PROFILES, os.path.join(root, "config", "profiles.json"))
    with open(os.path.join(root, "data", "synthetic", "repeats.csv"), "w") as f:
        f.write("timestamp,value\n")
        for i in range(ROWS):
            v = 5 + 2 * math.sin(2 * math.pi * i / 24) + random.uniform(-1.5, 1.5)
            v += sum(25 for s, n in zip(STARTS, LENGTHS) if s <= i < s + n)
            f.write(f"{stamp(i)},{v:.3f}\n")
    windows = [[stamp(s - 5, "%Y-%m-%d %H:%M:%S.000000"), stamp(s + n + 5, "%Y-%m-%d %H:%M:%S.000000")]
               for s, n in zip(STARTS, LENGTHS)]
    with open(os.path.join(root, "labels", "combined_windows.json"), "w") as f:
        json.dump({"synthetic/repeats.csv": windows}, f)


def server_threshold():
    """The server's threshold, `health::NAB_THRESHOLD`, as the source states it."""
    with open(HEALTH) as f:
        m = re.search(r"pub const NAB_THRESHOLD: f64 = ([0-9.]+);", f.read())
    if not m:
        sys.exit(f"NAB_THRESHOLD not found in {HEALTH}: give --threshold")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "tidewatch"))
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--param", action="append", default=[])
    args = ap.parse_args()
    if args.threshold is None:
        args.threshold = server_threshold()
    with tempfile.TemporaryDirectory() as tmp:
        data, results = os.path.join(tmp, "corpus"), os.path.join(tmp, "results")
        corpus(data)
        cmd = [args.bin, "nab", "--data", data, "--write-results", results]
        for p in args.param:
            cmd += ["--param", p]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        path = os.path.join(results, "tidewatch", "synthetic", "tidewatch_repeats.csv")
        scores = [float(r["anomaly_score"]) for r in csv.DictReader(open(path))]
    paged = 0
    for k, (s, n) in enumerate(zip(STARTS, LENGTHS), 1):
        top = max(scores[s:s + n])
        paged += top >= args.threshold
        print(f"incident {k} (row {s}, {n} rows): {top:.3f}{'  pages' if top >= args.threshold else ''}")
    outside = [x for i, x in enumerate(scores)
               if i >= WARM and not any(s <= i < s + n + 3 for s, n in zip(STARTS, LENGTHS))]
    false = sum(x >= args.threshold for x in outside)
    print(f"{paged} of {len(STARTS)} incidents page at {args.threshold}; outside them (from row {WARM}) "
          f"the highest score is {max(outside):.3f}, {false} rows at or above it")


if __name__ == "__main__":
    sys.exit(main())
