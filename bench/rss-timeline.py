#!/usr/bin/env python3
"""Where a Tidewatch's resident memory goes over one load, as it goes.

    bench/rss-timeline.py BINARY PROTOCOL RATE BATCH SECONDS [--scrape] [--env K=V ...] [--set PATH=VALUE ...]
    bench/rss-timeline.py target/release/tidewatch grpc 0 1000 12 --scrape
    bench/rss-timeline.py target/release/tidewatch grpc 0 1000 12 --env _RJEM_MALLOC_CONF=dirty_decay_ms:0

Starts the binary fresh (empty history directory) and feeds it with `tidewatch loadgen` (4 requests in
flight; rate 0 is flat out). Every 20 ms it reads VmRSS, RssAnon and the thread count from /proc; at each new
RSS maximum it splits /proc/PID/smaps by mapping (the binary's text and read-only data, other files, anonymous
mappings by size: thread stacks are 2-8 MiB, the allocator's extents of every size). With --scrape it
also reads /metrics every 250 ms for the admitted bytes (`analyzer_inflight_bytes`), the bytes of bodies being
read and the shards' queue depth. Prints accepted spans/s, CPU ticks, peak and end RSS, the RSS per half
second, the metrics' maxima and the split at the maximum. --env sets variables for the server only
(jemalloc reads `_RJEM_MALLOC_CONF` after the options the binary sets).
"""
import collections, json, os, re, subprocess, sys, tempfile, threading, time, urllib.request

args = sys.argv[1:]
if len(args) < 5:
    sys.exit(__doc__)
B, PROTO, RATE, BATCH, SECS = args[:5]
rest = args[5:]
scrape = "--scrape" in rest
env, sets, i = dict(os.environ), [], 0
while i < len(rest):
    if rest[i] == "--env":
        k, v = rest[i + 1].split("=", 1)
        env[k] = v
        i += 2
    elif rest[i] == "--set":
        sets += ["--set", rest[i + 1]]
        i += 2
    else:
        i += 1
d = tempfile.mkdtemp()
p = subprocess.Popen([B, "run", "--set", "collector.grpc.endpoint=127.0.0.1:0",
                      "--set", "collector.http.endpoint=127.0.0.1:0", "--set", "web.endpoint=127.0.0.1:0",
                      "--set", f"analyzer.store.data_dir={d}/data", "--set", "log.level=warn"] + sets,
                     stdout=open(f"{d}/out", "w"), stderr=open(f"{d}/err", "w"), env=env)
for _ in range(200):
    banner = open(f"{d}/out").read()
    if "listening" in banner:
        break
    time.sleep(0.05)
ep = re.search(PROTO + r"=([0-9.:]+)", banner).group(1)
web = re.search(r"web=([0-9.:]+)", banner).group(1)
pid = p.pid
exe = os.path.realpath(f"/proc/{pid}/exe")


def status():
    r = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "Threads", "VmHWM"):
            r[k] = int(v.split()[0])
    return r


def smaps():
    cur, tot = None, collections.Counter()
    for line in open(f"/proc/{pid}/smaps"):
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
        if m:
            size = (int(m.group(2), 16) - int(m.group(1), 16)) // 1024
            perms, path = m.group(3), m.group(4).strip()
            if path == exe:
                cur = "binary " + perms
            elif path.startswith("/"):
                cur = "other files"
            elif path:
                cur = path
            else:
                cur = "anonymous " + ("< 2 MiB" if size < 2048 else "2-8 MiB" if size <= 8200 else
                                      "8-64 MiB" if size < 65536 else ">= 64 MiB")
            continue
        if line.startswith("Rss:"):
            tot[cur] += int(line.split()[1])
    return tot


metrics, stop = [], False
WANTED = ("tidewatch_analyzer_inflight_bytes", "tidewatch_collector_reading_bytes",
          "tidewatch_analyzer_queue_depth_batches")


def scraper():
    while not stop:
        try:
            text = urllib.request.urlopen(f"http://{web}/metrics", timeout=2).read().decode()
            vals = collections.Counter()
            for line in text.splitlines():
                name = line.split("{")[0].split(" ")[0]
                if name in WANTED:
                    vals[name] += float(line.split()[-1])
            metrics.append(vals)
        except OSError:
            pass
        time.sleep(0.25)


print("idle", status(), flush=True)
if scrape:
    threading.Thread(target=scraper, daemon=True).start()
lg = subprocess.Popen([B, "loadgen", "--protocol", PROTO, "--endpoint", f"http://{ep}", "--rate", RATE,
                       "--batch", BATCH, "--duration", f"{SECS}s", "--concurrency", "4",
                       "--metrics-and-logs", "false", "--json"], stdout=subprocess.PIPE, text=True)
t0, best, at_best, samples, threads = time.time(), 0, None, [], 0
while lg.poll() is None:
    s = status()
    samples.append((time.time() - t0, s))
    threads = max(threads, s["Threads"])
    if s["VmRSS"] > best:
        best, at_best = s["VmRSS"], (time.time() - t0, smaps())
    time.sleep(0.02)
r = json.loads(lg.stdout.read().strip().splitlines()[-1])
time.sleep(1)
stop = True
ticks = sum(int(x) for x in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[11:13])
end = status()
print(f"accepted/s {r['spans_accepted'] / r['seconds']:.0f} refused {r['spans_refused']} cpu_ticks {ticks} "
      f"max threads {threads}")
print(f"VmHWM {end['VmHWM'] / 1024:.1f} MiB; end RSS {end['VmRSS'] / 1024:.1f} anon {end['RssAnon'] / 1024:.1f}")
halves = collections.defaultdict(int)
for t, s in samples:
    halves[int(t * 2)] = max(halves[int(t * 2)], s["VmRSS"])
print("RSS MiB per 0.5 s:", " ".join(f"{halves[k] / 1024:.0f}" for k in sorted(halves)))
if metrics:
    top = {k: max(m[k] for m in metrics) for k in WANTED}
    print("maxima:", {k: round(v / 2**20, 1) if k.endswith("bytes") else v for k, v in top.items()})
t, split = at_best
print(f"at the maximum ({best / 1024:.1f} MiB, {t:.1f} s in):")
for k, v in sorted(split.items(), key=lambda x: -x[1]):
    if v >= 100:
        print(f"  {v / 1024:7.1f} MiB  {k}")
p.terminate()
p.wait()
sys.stderr.write(open(f"{d}/err").read()[-3000:])
