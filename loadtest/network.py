"""Block propagation and memory across a local network of many node processes
(``make bench-network``).

Starts 4 validators and full and light nodes across regions (100 processes by default),
waits until every node follows the head, then for ``--seconds`` lets the chain make its
blocks. Each node lists when it learnt of each block (``/api/v1/network/arrivals``): per
height, the time from the first validator committing it to the last of all nodes having it
is the propagation time. Prints p50/p95 of that, the topology it formed, and the resident
memory per node type; writes JSON beside the other benchmark results.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from bench import machine  # the sibling script: run as loadtest/network.py

from qnet.localnode import (
    propagation_ms,
    rss_mib,
    start_network,
    topology_summary,
    wait_converged,
)

REGIONS = ["na", "sa", "eu", "af", "ap"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--validators", type=int, default=4)
    ap.add_argument("--light-share", type=float, default=0.6, help="of the non-validators")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=Path("bench-results/network.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="qnet-network-") as tmp:
        t0 = time.monotonic()
        nodes = start_network(Path(tmp), args.nodes, args.validators, args.light_share, REGIONS)
        try:
            started_s = time.monotonic() - t0
            converged_s = wait_converged(nodes, 120)
            first = max(n.status()["height"] for n in nodes) + 1
            time.sleep(args.seconds)
            shape = topology_summary(nodes)
            rss: dict[str, list[float]] = defaultdict(list)
            arrivals = {}
            for n in nodes:
                kind = n.config.get("node_type", "validator")
                rss["validator" if kind == "super" else kind].append(rss_mib(n.proc.pid))
                rows = n.get("/api/v1/network/arrivals")[1]["arrivals"]
                arrivals[n.data_dir.name] = {r["height"]: r["time_ms"] for r in rows}
            last = min(max(seen) for seen in arrivals.values())
            window = {
                name: {h: t for h, t in seen.items() if first <= h <= last}
                for name, seen in arrivals.items()
            }
            names = {n.data_dir.name for n in nodes[: args.validators]}
            spread = propagation_ms(window, names)
        finally:
            for n in nodes:
                n.stop()
    if not spread:
        print("no block reached every node in the window", file=sys.stderr)
        return 1
    times = list(spread.values())
    kinds = Counter(n.config.get("node_type", "validator") for n in nodes)
    result = {
        "machine": machine(),
        "nodes": dict(kinds),
        "regions": REGIONS,
        "start_s": round(started_s, 1),
        "converge_s": round(converged_s, 1),
        "blocks_measured": len(times),
        "blocks_in_window": last - first + 1,
        "propagation_ms": {
            "p50": percentile(times, 0.5),
            "p95": percentile(times, 0.95),
            "max": max(times),
        },
        "rss_mib": {
            kind: {"median": round(statistics.median(v), 1), "max": round(max(v), 1)}
            for kind, v in sorted(rss.items())
        },
        "topology": shape,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    p = result["propagation_ms"]
    print(f"{sum(kinds.values())} processes {dict(kinds)} in regions {', '.join(REGIONS)}")
    print(f"started in {started_s:.1f} s, every node at the head {converged_s:.1f} s later")
    print(
        f"block propagation to all nodes over {len(times)} blocks "
        f"(of {last - first + 1}): p50 {p['p50']} ms, p95 {p['p95']} ms, max {p['max']} ms"
    )
    for kind, v in result["rss_mib"].items():
        print(f"RSS {kind:9s} median {v['median']:6.1f} MiB, max {v['max']:6.1f} MiB")
    print(f"fewest same-region super/full peers by type: {shape['min_same_region_upstream']}")
    print(f"peers per validator: {shape['validator_peers']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
