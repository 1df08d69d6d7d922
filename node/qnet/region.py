"""``--region=auto``: pick the region whose seed nodes answer with the lowest round-trip time."""

import asyncio
import logging
import math
import time

import aiohttp

from .genesis import Seed

log = logging.getLogger("qnet.region")


async def _rtt(session: aiohttp.ClientSession, seed: Seed, tries: int) -> float:
    best = math.inf
    for _ in range(tries):
        started = time.perf_counter()
        try:
            async with session.get(f"{seed.api_url}/health") as resp:
                await resp.read()
                if resp.status != 200:
                    continue
        except (aiohttp.ClientError, TimeoutError):
            continue
        best = min(best, (time.perf_counter() - started) * 1000)
    return best


async def measure(seeds: tuple[Seed, ...], tries: int = 3, timeout_s: float = 2.0) -> dict:
    """Best round-trip time in ms per region over its seeds (inf when none answered)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        rtts = await asyncio.gather(*(_rtt(session, s, tries) for s in seeds))
    by_region: dict[str, float] = {}
    for seed, rtt in zip(seeds, rtts, strict=True):
        by_region[seed.region] = min(by_region.get(seed.region, math.inf), rtt)
    return by_region


def pick(rtts: dict[str, float]) -> str:
    """The region with the lowest finite RTT; ties go to the alphabetically first code."""
    reachable = {r: ms for r, ms in rtts.items() if math.isfinite(ms)}
    if not reachable:
        raise LookupError("no seed node answered, so no region can be chosen automatically")
    return min(reachable, key=lambda r: (reachable[r], r))


async def choose(seeds: tuple[Seed, ...]) -> tuple[str, dict[str, float]]:
    if not seeds:
        raise LookupError("--region=auto needs seed nodes in genesis.json; none are listed")
    rtts = await measure(seeds)
    region = pick(rtts)
    log.info(
        "region auto: chose %s; round-trip times %s",
        region,
        {r: (round(ms, 2) if math.isfinite(ms) else None) for r, ms in rtts.items()},
    )
    return region, rtts
