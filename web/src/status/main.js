// The status page: this node and its network at a glance, refreshed every few seconds from
// the node's own API (no Prometheus needed). Every figure comes from the API: the head and
// identity from /api/v1/status, block headers (time, transaction count) from
// /api/v1/blocks, when this node committed each block from /api/v1/network/arrivals, the
// peers from /api/v1/network/peers.

import uPlot from "uplot";
import { getJSON } from "../common/api.js";
import {
  BUCKET_MS,
  NODE_TYPES,
  WINDOW_MS,
  bucketEnds,
  commitLatencies,
  latencyStats,
  peerTally,
  rate,
  throughput,
} from "./series.js";

const REFRESH_MS = 3000;
const MAX_HEADERS_PAGE = 1000; // api.MAX_HEADERS_PER_PAGE
const PHONE_WIDTH = 600;
const COLORS = { axis: "#1b1f24", grid: "#dde3e9", tps: "#0b5cad", median: "#1d6b35", max: "#a4161a" };

const $ = (id) => document.getElementById(id);

const state = {
  headers: new Map(), // height -> header, the blocks of the plotted window and a little more
  headFetched: 0, // every header above this height is still to be fetched
  knownFromMs: Infinity, // headers are known from this block time on
  paused: false,
  updatedAt: null, // Date of the last refresh that got through
  status: null, // the last /api/v1/status answer
  failure: null, // {since, text} of the alert while the node fails to answer
  timer: null,
  plots: null,
};

// ---- formatting -------------------------------------------------------------------------

const clock = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});
const integer = new Intl.NumberFormat("en-US");
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s ago`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function shortId(id) {
  return id.length > 24 ? `${id.slice(0, 12)}…${id.slice(-6)}` : id;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// ---- plots ------------------------------------------------------------------------------

function plotHeight() {
  return window.innerWidth < PHONE_WIDTH ? 180 : 240;
}

function axes(yLabel) {
  const common = {
    stroke: COLORS.axis,
    grid: { stroke: COLORS.grid, width: 1 },
    ticks: { stroke: COLORS.grid, width: 1 },
    font: "12px system-ui, sans-serif",
    labelFont: "12px system-ui, sans-serif",
  };
  return [
    { ...common, label: "Time", labelSize: 20 },
    { ...common, label: yLabel, labelSize: 20, size: 50 },
  ];
}

function makePlot(container, yLabel, series) {
  const ends = bucketEnds(Date.now()).map((ms) => ms / 1000);
  const plot = new uPlot(
    {
      width: container.clientWidth,
      height: plotHeight(),
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max ?? 1) * 1.1] } },
      axes: axes(yLabel),
      series: [{ label: "Time" }, ...series],
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
    },
    [ends, ...series.map(() => ends.map(() => null))],
    container,
  );
  // The canvas says nothing to a screen reader: the plot is an image labelled by its title
  // and the summary beside it.
  const wrap = plot.root.querySelector(".u-wrap");
  const figure = container.closest("figure");
  wrap.setAttribute("role", "img");
  wrap.setAttribute(
    "aria-labelledby",
    `${figure.querySelector("figcaption").id} ${figure.querySelector(".summary").id}`,
  );
  new ResizeObserver(() => {
    if (container.clientWidth && container.clientWidth !== plot.width) {
      plot.setSize({ width: container.clientWidth, height: plotHeight() });
    }
  }).observe(container);
  return plot;
}

function makePlots() {
  const line = (label, stroke, fill) => ({
    label,
    stroke,
    width: 2,
    fill,
    points: { show: false },
    spanGaps: false,
  });
  return {
    tps: makePlot($("tps-plot"), "tx/s", [line("Transactions per second", COLORS.tps, "rgba(11, 92, 173, 0.12)")]),
    latency: makePlot($("latency-plot"), "ms", [
      line("Median", COLORS.median),
      line("Slowest", COLORS.max),
    ]),
  };
}

function setData(plot, container, xs, ys) {
  plot.setData([xs.map((ms) => ms / 1000), ...ys]);
  const points = ys.reduce((n, values) => n + values.filter((v) => v !== null).length, 0);
  container.dataset.points = String(points);
}

// ---- fetching ---------------------------------------------------------------------------

// Headers of the blocks above the last fetched up to `head` (at most one page: a node far
// behind the page starts again from the newest page).
async function fetchHeaders(head) {
  if (head <= state.headFetched) return;
  let from = state.headFetched + 1;
  if (head - from + 1 > MAX_HEADERS_PAGE || state.headers.size === 0) {
    from = Math.max(1, head - MAX_HEADERS_PAGE + 1);
    state.headers.clear();
    state.knownFromMs = Infinity;
  }
  const page = await getJSON(`/api/v1/blocks?from=${from}&to=${head}`);
  for (const header of page.headers) {
    state.headers.set(header.height, header);
  }
  if (page.headers.length) {
    // From block 1 on, every block is known: its whole window counts (nothing came before).
    const first = page.headers[0];
    const known = first.height === 1 ? first.time_ms - BUCKET_MS : first.time_ms;
    state.knownFromMs = Math.min(state.knownFromMs, known);
    state.headFetched = page.headers[page.headers.length - 1].height;
  }
  const keepFrom = Date.now() - WINDOW_MS - BUCKET_MS;
  for (const [height, header] of state.headers) {
    if (header.time_ms < keepFrom && height < state.headFetched) state.headers.delete(height);
  }
}

async function refresh() {
  const [status, peers, arrivals] = await Promise.all([
    getJSON("/api/v1/status"),
    getJSON("/api/v1/network/peers"),
    getJSON("/api/v1/network/arrivals"),
  ]);
  await fetchHeaders(status.height);
  render(status, peers.peers, arrivals.arrivals);
}

// ---- rendering --------------------------------------------------------------------------

function renderLastBlock(status) {
  $("last-block").textContent = status.height
    ? `${ago(Date.now() - status.block_time_ms)} (${clock.format(new Date(status.block_time_ms))})`
    : "none yet";
}

function renderNode(status) {
  $("identity").textContent =
    `Node ${shortId(status.node_id)} · ${status.node_type} · region ${status.region} · ` +
    `version ${status.version}`;
  $("height").textContent = integer.format(status.height);
  renderLastBlock(status);
  const lag = status.sync_lag_blocks;
  $("sync-lag").textContent = lag === 0 ? "in sync" : `${integer.format(lag)} blocks behind`;
  $("peer-count").textContent = integer.format(status.peers);
  $("mempool").textContent = `${integer.format(status.mempool_size)} transactions`;
  $("node-type").textContent = status.node_type;
  $("region").textContent = status.region;
  $("version").textContent = status.version;
  $("uptime").textContent = duration(status.uptime_s);
  $("chain").textContent = status.chain_id;
}

function renderPlots(arrivals) {
  const now = Date.now();
  const ends = bucketEnds(now);
  const headers = [...state.headers.values()];
  const tps = throughput(ends, headers, state.knownFromMs, now);
  setData(state.plots.tps, $("tps-plot"), ends, [tps]);
  const recent = rate(headers, now - 30_000, now, state.knownFromMs);
  const all = rate(headers, now - WINDOW_MS, now, state.knownFromMs);
  $("tps-summary").textContent =
    recent === null
      ? "No blocks in this window yet."
      : `${decimal.format(recent)} tx/s over the last 30 s; ${decimal.format(all)} tx/s on ` +
        `average, ${decimal.format(Math.max(...tps.filter((v) => v !== null)))} at most in 5 s.`;

  const latencies = commitLatencies(state.headers, arrivals);
  const { medians, maxima } = latencyStats(ends, latencies);
  setData(state.plots.latency, $("latency-plot"), ends, [medians, maxima]);
  const inWindow = latencies.filter((b) => b.time_ms > ends[0] - BUCKET_MS);
  if (inWindow.length === 0) {
    $("latency-summary").textContent = "No block committed here in this window yet.";
  } else {
    const sorted = inWindow.map((b) => b.latency_ms).sort((a, b) => a - b);
    const p50 = sorted[Math.floor((sorted.length - 1) / 2)];
    $("latency-summary").textContent =
      `${integer.format(inWindow.length)} blocks: median ${integer.format(p50)} ms, ` +
      `slowest ${integer.format(sorted[sorted.length - 1])} ms.`;
  }
}

function renderPeers(peers) {
  const tally = $("peer-tally").tBodies[0];
  const rows = peerTally(peers).map(({ region, counts, total }) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = region;
    tr.append(th, ...NODE_TYPES.map((t) => cell(integer.format(counts[t]), "num")));
    tr.append(cell(integer.format(total), "num"));
    return tr;
  });
  tally.replaceChildren(...rows);

  const list = $("peer-list").tBodies[0];
  if (peers.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("No peer is connected.");
    td.colSpan = 6;
    tr.append(td);
    list.replaceChildren(tr);
    return;
  }
  list.replaceChildren(
    ...peers.map((peer) => {
      const tr = document.createElement("tr");
      const node = cell(shortId(peer.node_id));
      node.title = peer.node_id;
      tr.append(
        node,
        cell(peer.validator ? `${peer.node_type} (validator)` : peer.node_type),
        cell(peer.region),
        cell(peer.direction),
        cell(peer.height === null ? "–" : integer.format(peer.height), "num"),
        cell(peer.latency_ms === null ? "–" : `${decimal.format(peer.latency_ms)} ms`, "num"),
      );
      return tr;
    }),
  );
}

function render(status, peers, arrivals) {
  state.status = status;
  renderNode(status);
  renderPlots(arrivals);
  renderPeers(peers);
}

function showFailure(error) {
  const sinceDate = state.failure?.since ?? new Date();
  const since = clock.format(sinceDate);
  const last = state.updatedAt
    ? `The figures below are from ${clock.format(state.updatedAt)}.`
    : "Nothing could be shown yet.";
  let what;
  if (error.kind === "unreachable") {
    what = `This node cannot be reached since ${since} (it is down, or the network to it is).`;
  } else if (error.kind === "timeout") {
    what = `This node has not answered since ${since}: ${error.message}.`;
  } else {
    what = `This node fails to answer since ${since}: ${error.message}`;
  }
  const text = `${what} ${last} Trying again every ${REFRESH_MS / 1000} s.`;
  if (state.failure?.text !== text) {
    $("alert").textContent = text; // set only when it changes: each change is announced
  }
  state.failure = { since: sinceDate, text };
  document.body.classList.add("stale");
  if (state.status) {
    renderLastBlock(state.status); // its age goes on growing
  }
}

function clearFailure() {
  if (state.failure) {
    $("alert").textContent = "";
    state.failure = null;
    document.body.classList.remove("stale");
  }
}

// ---- the refresh loop -------------------------------------------------------------------

async function tick() {
  state.timer = null;
  try {
    await refresh();
    state.updatedAt = new Date();
    clearFailure();
    $("updated").textContent =
      `Updated at ${clock.format(state.updatedAt)}; ` +
      (state.paused ? "updates paused." : `updates every ${REFRESH_MS / 1000} s.`);
  } catch (error) {
    if (error?.name !== "ApiError") {
      console.error(error);
    }
    showFailure(error);
  }
  schedule();
}

function schedule() {
  if (!state.paused && state.timer === null) {
    state.timer = setTimeout(tick, REFRESH_MS);
  }
}

function togglePause() {
  state.paused = !state.paused;
  const button = $("pause");
  button.setAttribute("aria-pressed", String(state.paused)); // the label stays: a toggle
  if (state.paused) {
    clearTimeout(state.timer);
    state.timer = null;
    $("updated").textContent = state.updatedAt
      ? `Updated at ${clock.format(state.updatedAt)}; updates paused.`
      : "Updates paused.";
  } else {
    tick();
  }
}

function start() {
  state.plots = makePlots();
  $("pause").addEventListener("click", togglePause);
  tick();
}

start();
