"""Consensus drivers. A driver decides when a block is proposed and when it is final.

``SoloConsensus`` is the single-validator case: the genesis lists one validator, which
proposes as soon as there is work (no faster than the genesis block interval) and whose own
precommit is a commit certificate with all of the voting power. The BFT driver for several
validators replaces it without changing ``Node``.
"""

import asyncio
import logging
import time

from .block import CommitCertificate
from .node import Node

log = logging.getLogger("qnet.consensus")


class SoloConsensus:
    def __init__(self, node: Node):
        powers = node.validator_powers
        if list(powers) != [node.key.public_key]:
            raise ValueError("solo consensus needs a genesis whose only validator is this node")
        self.node = node

    async def run(self) -> None:
        node = self.node
        interval = node.params.block_interval_ms / 1000
        last = 0.0
        while True:
            await node.work.wait()
            delay = last + interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # block interval: the chain's pacing, by design
            node.work.clear()
            node.expire_mempool()
            if not len(node.mempool):
                continue
            last = time.monotonic()
            block, diff = node.build_block(int(time.time() * 1000))
            if block.txs:
                sig = node.sign_precommit(block.header.height, 0, block.hash)
                cert = CommitCertificate(
                    block.header.height, 0, block.hash, ((node.key.public_key, sig),)
                )
                await node.commit(block, cert, diff)
            if len(node.mempool):
                node.work.set()
