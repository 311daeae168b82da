#!/usr/bin/env python3
"""The largest allocation sites in a dhat heap profile, grouped by Tidewatch's own frames.

    bench/dhat-top.py dhat-heap.json [FIELD] [N]

dhat-heap.json is what a build with `--features tidewatch/dhat-heap` writes in its working directory at
shutdown. FIELD is one of dhat's per-site totals: gb (bytes live at the heap's peak, the default), eb (at
the end), tb (allocated in all); N the number of rows (25). Each row: bytes, blocks, and the first three
frames of Tidewatch's crates on the site's stack (the standard library's and allocator's frames skipped).
"""

import json
import re
import sys

OWN = ("tidewatch", "analyzer", "collector", "dashboards")
SKIP = re.compile(r"alloc::|core::|hashbrown::raw|std::|<alloc|dhat::|__rust|mimalloc|<hashbrown|raw_vec|<core")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    profile = json.load(open(sys.argv[1]))
    field = sys.argv[2] if len(sys.argv) > 2 else "gb"
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    frames = profile["ftbl"]
    print(f"total {field}: {sum(p.get(field, 0) for p in profile['pps']):,} bytes")
    sites = {}
    for p in profile["pps"]:
        stack = [re.sub(r"^0x[0-9a-f]+: ", "", frames[i]) for i in p["fs"]]
        own = [f for f in stack if any(o in f for o in OWN) and not SKIP.search(f[:40])]
        label = " <- ".join(f[:110] for f in (own[:3] if own else stack[1:4]))
        total = sites.setdefault(label, [0, 0])
        total[0] += p.get(field, 0)
        total[1] += p.get(field + "k", p.get("tbk", 0))
    for label, (size, blocks) in sorted(sites.items(), key=lambda s: -s[1][0])[:rows]:
        print(f"{size:>10,} {blocks:>7,}  {label}")


if __name__ == "__main__":
    main()
