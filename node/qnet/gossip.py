"""Transaction gossip: how transactions travel between nodes (DESIGN §5).

Transactions flow up the hierarchy, towards the validators: a node relays what its own
admission accepted to its upstream peers (validators if any is a peer, otherwise the super
and full peers, which pass them on up), in TXS frames of at most ``wire.TX_BATCH``, never
back to the peer they came from. Validators are a mesh, so what one relays the others got
from it already: a validator does not relay what came from another.

A TXS frame is checked before anything else happens to it (``wire.Txs``: its bytes, then its
count), a large one is cut into transactions off the event loop, and admission verifies each
transaction once. A peer that relays a transaction whose signature does not verify is
banned: an honest relay passes on only what its own admission verified.

Refusals cost the node their cheap checks, yet cost the sender nothing (no fee is paid, no
signature checked): each link but a validator's has a budget of ``PEER_REFUSALS_PER_S``
refused transactions a second (``PEER_REFUSAL_BURST`` at once). Its TXS frames are admitted
in steps of that many, each taking as many tokens as it holds transactions and given back
those admission took or already had (a duplicate is what gossip along two paths brings, and
costs only its decoding); what finds too few is dropped unread, and counted
(``qnet_peer_txs_dropped_total``). An honest relay passes on only what its own admission
took, so it spends its budget only where states differ; a flood of refusals costs at most
the budget, and the event loop serves consensus between steps.

At a stop the whole mempool is handed up, since a transaction this node admitted may be
nowhere else yet.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Collection

from .node import Node
from .p2p import PeerInfo, PeerNetwork, TokenBucket
from .tx import Transaction
from .wire import KIND_TXS, TX_BATCH, Txs

log = logging.getLogger("qnet.gossip")

TX_FLUSH_S = 0.01
TX_SPLIT_INLINE_BYTES = 64 * 1024  # bigger TXS frames are cut into transactions off the loop
BAD_SIGNATURE = "bad_signature"  # the refusal code of ``Node.submit`` for it
DUPLICATE = "duplicate"  # the refusal code of ``Node.submit`` for one it has already
PEER_REFUSALS_PER_S = 200.0  # refused transactions a link other than a validator's may cost
PEER_REFUSAL_BURST = 500  # and at once; its TXS frames are admitted in steps of this many


class TxGossip:
    """The relay queue of one node and the TXS frames it sends and takes.

    ``ban(node_id, reason)`` is the driver's, so that what a banned link still had in flight
    is dropped unread."""

    def __init__(
        self,
        node: Node,
        net: PeerNetwork,
        validators: Collection[bytes],
        is_validator: bool,
        ban: Callable[[str, str], None],
    ):
        self.node = node
        self.net = net
        self.validators = validators
        self.is_validator = is_validator
        self._ban = ban
        self._relay: list[tuple[Transaction, str | None]] = []  # (tx, the peer it came from)
        # Refusals each connected link but a validator's may still cost (see the module
        # docstring); links whose frames are being dropped, logged once a burst.
        self._refusal_budgets: dict[str, TokenBucket] = {}
        self._over_budget: set[str] = set()

    def forget(self, node_id: str) -> None:
        """A link ended."""
        self._refusal_budgets.pop(node_id, None)
        self._over_budget.discard(node_id)

    async def on_txs(self, peer: PeerInfo, payload: bytes) -> None:
        if len(payload) > TX_SPLIT_INLINE_BYTES:
            raws = list((await asyncio.to_thread(Txs.decode, payload)).raws)
        else:
            raws = list(Txs.decode(payload).raws)
        if peer.public_key in self.validators:
            # Validators are a mesh: what one relays, the others already got from it.
            outcome = await self.node.submit_raw(
                raws, relay=not self.is_validator, source=peer.node_id
            )
        else:
            outcome = await self._submit_within_budget(peer, raws)
        bad = sum(1 for refused in outcome if refused is not None and refused.code == BAD_SIGNATURE)
        if bad:
            self._ban(
                peer.node_id,
                f"relayed {bad} of {len(raws)} transactions with a signature that does not verify",
            )

    async def _submit_within_budget(self, peer: PeerInfo, raws: list[bytes]) -> list:
        """Admit a TXS frame of a link other than a validator's in steps of
        ``PEER_REFUSAL_BURST`` transactions, each taking its size from the link's budget and
        giving back what admission took or had; what finds the budget spent is dropped
        unread. The event loop serves the others between steps."""
        budget = self._refusal_budgets.get(peer.node_id)
        if budget is None:
            budget = self._refusal_budgets[peer.node_id] = TokenBucket(
                PEER_REFUSALS_PER_S, PEER_REFUSAL_BURST, time.monotonic()
            )
        outcome: list = []
        for at in range(0, len(raws), PEER_REFUSAL_BURST):
            step = raws[at : at + PEER_REFUSAL_BURST]
            if not budget.take(time.monotonic(), len(step)):
                self.node.metrics.peer_txs_dropped.inc(len(raws) - at)
                if peer.node_id not in self._over_budget:
                    self._over_budget.add(peer.node_id)
                    log.warning(
                        "dropping transactions from %s unread: it spent its budget of %g "
                        "refused transactions a second",
                        peer.node_id,
                        PEER_REFUSALS_PER_S,
                    )
                break
            self._over_budget.discard(peer.node_id)
            done = await self.node.submit_raw(step, source=peer.node_id)
            budget.give_back(
                sum(1 for refused in done if refused is None or refused.code == DUPLICATE)
            )
            outcome += done
            await asyncio.sleep(0)  # a step refused whole never waited: let the others run
        return outcome

    async def flush_loop(self) -> None:
        """Relay newly admitted transactions up the hierarchy in batches, never back to the
        peer they came from."""
        while True:
            await asyncio.sleep(TX_FLUSH_S)  # batching window for gossip
            await self.send_up()

    async def send_up(self) -> None:
        """Send what waits in the relay queue to the upstream peers, in batches."""
        while self._relay:
            batch, self._relay[:TX_BATCH] = self._relay[:TX_BATCH], []
            sources = {source for _, source in batch}
            whole = b""
            for peer in self.upstream():
                if peer.node_id in sources:
                    txs = [t for t, source in batch if source != peer.node_id]
                    data = Txs.of(txs).encode() if txs else b""
                else:
                    data = whole = whole or Txs.of(t for t, _ in batch).encode()
                if data:
                    await self.net.send(peer.node_id, KIND_TXS, data)

    async def hand_off(self) -> None:
        """At a stop, hand every pending transaction up: one this node admitted may be
        nowhere else yet (its relay batch not sent, or sent to no one), and the node that
        starts again from this data dir has an empty mempool. Peers that have it already
        drop it as a duplicate; ``net.stop`` lets the frames leave before it closes."""
        txs = self.node.mempool.pending()
        peers = self.upstream()
        if not txs or not peers:
            return
        self._relay = [(t, None) for t in txs]  # the whole mempool holds what was queued
        await self.send_up()
        log.info("handed %d pending transactions to %d peers", len(txs), len(peers))

    def queue(self, txs: list[Transaction], source: str | None) -> None:
        self._relay.extend((t, source) for t in txs)

    def upstream(self) -> list[PeerInfo]:
        """Where transactions go: to validators if any is a peer (always, for a validator),
        otherwise to the super and full peers, which pass them on up."""
        validators = self._validator_peers()
        if validators or self.is_validator:
            return validators
        return [p for p in self.net.peers() if p.node_type != "light"]

    def _validator_peers(self) -> list[PeerInfo]:
        return [p for p in self.net.peers() if p.public_key in self.validators]
