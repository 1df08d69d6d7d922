import asyncio
import math

import pytest
from aiohttp import web

from qnet import region
from qnet.genesis import Seed
from qnet.localnode import free_port


def test_pick_lowest_finite_rtt():
    assert region.pick({"eu": 12.0, "na": 3.5, "ap": math.inf}) == "na"
    assert region.pick({"eu": 2.0, "af": 2.0}) == "af"  # ties are broken by code


def test_pick_refuses_when_nothing_answered():
    with pytest.raises(LookupError, match="no seed node answered"):
        region.pick({"eu": math.inf})


def test_choose_needs_seeds():
    with pytest.raises(LookupError, match="needs seed nodes"):
        asyncio.run(region.choose(()))


def test_measure_real_seeds_and_unreachable_ones():
    """A seed that answers /health gets a finite RTT; a closed port and a 500 do not."""

    async def scenario():
        async def ok(_):
            return web.json_response({"status": "ok"})

        async def broken(_):
            return web.json_response({}, status=500)

        runners = []
        ports = []
        for handler in (ok, broken):
            app = web.Application()
            app.router.add_get("/health", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
            ports.append(port)
        try:
            seeds = (
                Seed("n1", "eu", f"http://127.0.0.1:{ports[0]}"),
                Seed("n2", "na", f"http://127.0.0.1:{ports[1]}"),
                Seed("n3", "ap", f"http://127.0.0.1:{free_port()}"),
            )
            return await region.choose(seeds)
        finally:
            for r in runners:
                await r.cleanup()

    chosen, rtts = asyncio.run(scenario())
    assert chosen == "eu"
    assert math.isfinite(rtts["eu"]) and rtts["eu"] > 0
    assert rtts["na"] == math.inf and rtts["ap"] == math.inf
