// What the status page plots and tabulates, computed from the node's API answers; pure
// functions, no DOM.
//
// Throughput: committed transactions per second, from the block headers (time_ms, tx_count)
// summed over fixed windows. Commit latency: for each block, the time this node committed it
// (/api/v1/network/arrivals) minus the time in its header (when its proposer made it), the
// same measure as the node's qnet_commit_latency_seconds metric.

export const WINDOW_MS = 5 * 60 * 1000; // what the plots show
export const BUCKET_MS = 5000; // one point per 5 s
export const REGIONS = ["na", "sa", "eu", "af", "ap", "me", "oc"]; // qnet.genesis.REGIONS
export const NODE_TYPES = ["super", "full", "light"]; // qnet.genesis.NODE_TYPES

// The ends (unix ms) of the windows of the last WINDOW_MS, oldest first; the last one is the
// window `nowMs` is in, which ends after it.
export function bucketEnds(nowMs) {
  const last = Math.floor(nowMs / BUCKET_MS) * BUCKET_MS + BUCKET_MS;
  const ends = [];
  for (let end = last - WINDOW_MS + BUCKET_MS; end <= last; end += BUCKET_MS) {
    ends.push(end);
  }
  return ends;
}

// Blocks (objects with time_ms) of each window (end - BUCKET_MS, end].
function byBucket(ends, blocks) {
  const groups = ends.map(() => []);
  const first = ends[0] - BUCKET_MS;
  for (const block of blocks) {
    const index = Math.ceil((block.time_ms - first) / BUCKET_MS) - 1;
    if (index >= 0 && index < ends.length) {
      groups[index].push(block);
    }
  }
  return groups;
}

// Transactions per second in each window, the current one over the part of it that has
// passed at `nowMs`; null before `knownFromMs` (no header known there).
export function throughput(ends, headers, knownFromMs, nowMs) {
  return byBucket(ends, headers).map((group, i) => {
    const start = ends[i] - BUCKET_MS;
    if (start < knownFromMs) {
      return null;
    }
    const txs = group.reduce((sum, header) => sum + header.tx_count, 0);
    const span = Math.max(1000, Math.min(ends[i], nowMs) - start);
    return txs / (span / 1000);
  });
}

// Transactions per second over (fromMs, toMs], or over the part of it from `knownFromMs`;
// null when none of it is known.
export function rate(headers, fromMs, toMs, knownFromMs) {
  const start = Math.max(fromMs, knownFromMs);
  if (start >= toMs) {
    return null;
  }
  let txs = 0;
  for (const header of headers) {
    if (header.time_ms > start && header.time_ms <= toMs) txs += header.tx_count;
  }
  return txs / (Math.max(1000, toMs - start) / 1000);
}

function median(sorted) {
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

// Per window, the median and the largest commit latency (ms) of its blocks (null: none).
// `latencies`: objects {time_ms (the header's), latency_ms}.
export function latencyStats(ends, latencies) {
  const medians = [];
  const maxima = [];
  for (const group of byBucket(ends, latencies)) {
    const sorted = group.map((b) => b.latency_ms).sort((a, b) => a - b);
    medians.push(sorted.length ? median(sorted) : null);
    maxima.push(sorted.length ? sorted[sorted.length - 1] : null);
  }
  return { medians, maxima };
}

// Commit latency of each block whose header and arrival are both known.
export function commitLatencies(headersByHeight, arrivals) {
  const out = [];
  for (const { height, time_ms: arrived } of arrivals) {
    const header = headersByHeight.get(height);
    if (header) {
      out.push({ height, time_ms: header.time_ms, latency_ms: Math.max(0, arrived - header.time_ms) });
    }
  }
  return out;
}

// Peers counted by region (rows, in REGIONS order, then any other) and node type.
export function peerTally(peers) {
  const rows = new Map(REGIONS.map((r) => [r, Object.fromEntries(NODE_TYPES.map((t) => [t, 0]))]));
  for (const peer of peers) {
    if (!rows.has(peer.region)) {
      rows.set(peer.region, Object.fromEntries(NODE_TYPES.map((t) => [t, 0])));
    }
    const row = rows.get(peer.region);
    row[peer.node_type] = (row[peer.node_type] ?? 0) + 1;
  }
  return [...rows].map(([region, counts]) => ({
    region,
    counts,
    total: Object.values(counts).reduce((a, b) => a + b, 0),
  }));
}
