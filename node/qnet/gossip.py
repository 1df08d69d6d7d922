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
signature checked): the links of each address group but a validator's (``p2p.party_of``,
as for inbound strangers: a reconnection or a fresh node key does not start afresh) have a budget
of ``PEER_REFUSALS_PER_S`` refused transactions a second (``PEER_REFUSAL_BURST`` at once).
A TXS frame is admitted in steps of at most that many and at most the tokens there are, and
each step's refusals are then taken from them; duplicates cost none (gossip along two paths
brings them, and they cost only their decoding and a lookup). What finds no token is
dropped without admission, and counted (``qnet_peer_txs_dropped_total``). An honest relay
passes on only what its own admission took, so it spends its budget only where states
differ, and a frame of it is never cut by a few refusals; a flood of refusals costs at most
the budget, and the event loop serves consensus between steps.

At a stop the whole mempool is handed up, since a transaction this node admitted may be
nowhere else yet.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

from .node import Node
from .p2p import PeerInfo, PeerNetwork, TokenBucket, party_of
from .tx import Transaction
from .wire import KIND_TXS, TX_BATCH, Txs

log = logging.getLogger("qnet.gossip")

TX_FLUSH_S = 0.01
TX_SPLIT_INLINE_BYTES = 64 * 1024  # bigger TXS frames are cut into transactions off the loop
BAD_SIGNATURE = "bad_signature"  # the refusal code of ``Node.submit`` for it
DUPLICATE = "duplicate"  # the refusal code of ``Node.submit`` for one it has already
PEER_REFUSALS_PER_S = 200.0  # refused transactions a link other than a validator's may cost
PEER_REFUSAL_BURST = 500  # and at once; its TXS frames are admitted in steps of this many
BUDGETS_KEPT = 4_096  # address groups whose refusal budgets are remembered


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
        # Refusals each address group but a validator's may still cost (see the module
        # docstring), kept across reconnections, the most recently used BUDGETS_KEPT; the
        # groups whose frames are being dropped, logged once a burst.
        self._budgets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._over_budget: set[str] = set()
        self.clock: Callable[[], float] = time.monotonic

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
            self._banned_for_bad_signatures(peer, outcome, len(raws))
        else:
            await self._submit_within_budget(peer, raws)

    def _banned_for_bad_signatures(self, peer: PeerInfo, outcome: list, sent: int) -> bool:
        bad = sum(1 for refused in outcome if refused is not None and refused.code == BAD_SIGNATURE)
        if bad:
            self._ban(
                peer.node_id,
                f"relayed {bad} of {sent} transactions with a signature that does not verify",
            )
        return bad > 0

    def _budget(self, peer: PeerInfo) -> tuple[str, TokenBucket]:
        """The refusal budget of the peer's address group (a node id costs nothing to make,
        an address more), made full the first time."""
        group = party_of(peer)
        budget = self._budgets.get(group)
        if budget is None:
            budget = self._budgets[group] = TokenBucket(
                PEER_REFUSALS_PER_S, PEER_REFUSAL_BURST, self.clock()
            )
            while len(self._budgets) > BUDGETS_KEPT:
                self._over_budget.discard(self._budgets.popitem(last=False)[0])
        self._budgets.move_to_end(group)
        return group, budget

    async def _submit_within_budget(self, peer: PeerInfo, raws: list[bytes]) -> None:
        """Admit a TXS frame of a link other than a validator's in steps of at most
        ``PEER_REFUSAL_BURST`` transactions and at most the tokens its group has; each step's
        refusals (not its duplicates) are then taken from them. What finds no token is
        dropped without admission; a step with a bad signature gets the link banned and ends
        the frame. The event loop serves the others between steps."""
        group, budget = self._budget(peer)
        at = 0
        while at < len(raws):
            size = min(PEER_REFUSAL_BURST, int(budget.refill(self.clock())))
            if size < 1:
                self.node.metrics.peer_txs_dropped.inc(len(raws) - at)
                if group not in self._over_budget:
                    self._over_budget.add(group)
                    log.warning(
                        "dropping transactions from %s (%s) without admission: it spent its "
                        "budget of %g refused transactions a second",
                        peer.node_id,
                        group,
                        PEER_REFUSALS_PER_S,
                    )
                return
            self._over_budget.discard(group)
            step, at = raws[at : at + size], at + size
            done = await self.node.submit_raw(step, source=peer.node_id)
            budget.charge(
                sum(1 for refused in done if refused is not None and refused.code != DUPLICATE)
            )
            if self._banned_for_bad_signatures(peer, done, len(raws)):
                return
            await asyncio.sleep(0)  # a step refused whole never waited: let the others run

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
