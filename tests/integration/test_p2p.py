"""The peer-to-peer layer on loopback: several PeerNetworks in one process, plus hand-driven
raw peers that misbehave. Every scenario stops everything it started and checks that no
task is left behind."""

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from qnet import crypto, p2p, wire
from qnet.localnode import free_port
from qnet.topology import PeerPolicy

CHAIN = "qnet-p2p-test"
GENESIS = crypto.digest(b"genesis of the p2p test chain")
APP = wire.FIRST_APP_KIND
FAST = {"peer_exchange_s": 0.3, "heartbeat_s": 1.0}


@dataclass
class Node:
    """A PeerNetwork and what it has handed to its node."""

    net: p2p.PeerNetwork
    received: list[tuple[str, int, bytes]] = field(default_factory=list)
    events: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.net.key.node_id

    @property
    def address(self) -> str:
        return self.net.listen

    def peer_ids(self) -> set[str]:
        return {p.node_id for p in self.net.peers()}

    def dropped(self, reason: str) -> float:
        value = self.net.registry.get_sample_value(
            "qnet_p2p_dropped_peers_total", {"reason": reason}
        )
        return value or 0.0


class Cluster:
    """Makes nodes on free loopback ports and stops all of them at the end."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    async def start(
        self,
        *,
        key: crypto.KeyPair | None = None,
        seeds: tuple[str, ...] = (),
        port: int | None = None,
        node_type: str = "super",
        region: str = "eu",
        chain_id: str = CHAIN,
        genesis_hash: bytes = GENESIS,
        **options,
    ) -> Node:
        node = Node(None)  # type: ignore[arg-type] - the callbacks need the node first

        async def on_message(info: p2p.PeerInfo, kind: int, payload: bytes) -> None:
            node.received.append((info.node_id, kind, payload))

        async def on_peer(info: p2p.PeerInfo, connected: bool) -> None:
            node.events.append((info.node_id, connected))

        node.net = p2p.PeerNetwork(
            key=key or crypto.KeyPair.generate(),
            chain_id=chain_id,
            genesis_hash=genesis_hash,
            node_type=node_type,
            region=region,
            listen_host="127.0.0.1",
            listen_port=port or free_port(),
            seeds=list(seeds),
            on_message=on_message,
            on_peer=on_peer,
            **{**FAST, **options},
        )
        await node.net.start()
        self.nodes.append(node)
        return node

    async def stop(self, node: Node) -> None:
        await node.net.stop()
        self.nodes.remove(node)

    async def stop_all(self) -> None:
        for node in list(self.nodes):
            await self.stop(node)


def run(scenario: Callable[[Cluster], Coroutine[Any, Any, None]]) -> None:
    """Run a scenario on a fresh loop; stop every node; no task may outlive the nodes."""

    async def main() -> None:
        cluster = Cluster()
        try:
            await scenario(cluster)
        finally:
            await cluster.stop_all()
        left = asyncio.all_tasks() - {asyncio.current_task()}
        assert not left, f"tasks left behind: {left}"

    asyncio.run(main())


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> float:
    """Wait for a condition; returns how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not predicate():
        if loop.time() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
    return loop.time() - started


async def stays(predicate: Callable[[], bool], what: str, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        assert predicate(), what
        await asyncio.sleep(0.02)


class RawPeer:
    """A hand-driven peer speaking the wire protocol itself, so it can misbehave."""

    def __init__(
        self,
        key: crypto.KeyPair | None = None,
        *,
        sign_with: crypto.KeyPair | None = None,
        chain_id: str = CHAIN,
        genesis_hash: bytes = GENESIS,
    ):
        self.key = key or crypto.KeyPair.generate()
        self.signer = sign_with or self.key
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.session = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.link: p2p.SecretLink | None = None
        self.frames: deque[bytes] = deque()  # opened, not yet expected
        self.records: list[bytes] = []  # every sealed record received, as on the wire

    async def connect(self, node: Node) -> aiohttp.ClientWebSocketResponse:
        self.ws = await self.session.ws_connect(f"http://{node.address}{p2p.PATH}")
        return self.ws

    async def handshake(self, node: Node) -> None:
        ws = await self.connect(node)
        ephemeral, secret = p2p.ephemeral_keypair()
        ours = wire.Hello(
            p2p.PROTOCOL_VERSION,
            self.chain_id,
            self.genesis_hash,
            self.key.public_key,
            "full",
            "eu",
            "",
            0,
            ephemeral,
        ).encode()
        await ws.send_bytes(p2p.frame(wire.KIND_HELLO, ours))
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.BINARY and msg.data[0] == wire.KIND_HELLO
        theirs = msg.data[1:]
        their_ephemeral = wire.Hello.decode(theirs).ephemeral
        self.link = p2p.SecretLink.between(secret, their_ephemeral, ours, theirs, True, 2**24)
        await self.send(p2p.frame(wire.KIND_AUTH, self.signer.sign(p2p.auth_message(ours, theirs))))
        await self.expect(wire.KIND_AUTH)

    def seal(self, *frames: bytes) -> list[bytes]:
        assert self.link is not None
        return list(self.link.seal(list(frames)))

    async def send(self, *frames: bytes) -> None:
        """Send frames sealed, as a node does (together, in as few records as they fit)."""
        assert self.ws is not None
        for record in self.seal(*frames):
            await self.ws.send_bytes(record)

    async def expect(self, kind: int) -> bytes:
        """The next frame of ``kind``, answering GET_PEERS on the way; AssertionError if
        the connection closes first."""
        assert self.ws is not None and self.link is not None
        while True:
            while self.frames:
                data = self.frames.popleft()
                if data[0] == kind:
                    return data[1:]
                if data[0] == wire.KIND_GET_PEERS:
                    await self.send(p2p.frame(wire.KIND_PEERS, wire.Peers(()).encode()))
            msg = await self.ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.BINARY, f"got {msg.type} {msg.data}"
            self.records.append(msg.data)
            self.frames.extend(self.link.open(msg.data))

    async def closed_by_peer(self) -> int | None:
        """Read until the node closes the connection; returns its close code."""
        assert self.ws is not None
        while not self.ws.closed:
            msg = await self.ws.receive(timeout=5)
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
            ):
                break
        return self.ws.close_code

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.session.close()


async def raw_peer(body: Callable[[RawPeer], Awaitable[None]], **options) -> None:
    peer = RawPeer(**options)
    try:
        await body(peer)
    finally:
        await peer.close()


def mesh_formed(nodes: list[Node]) -> bool:
    return all(n.peer_ids() == {m.id for m in nodes} - {n.id} for n in nodes)


def told_connected(node: Node) -> set[str]:
    """The peers the node was last told are connected, checking the events alternate."""
    state: dict[str, bool] = {}
    for node_id, connected in node.events:
        assert state.get(node_id, False) != connected, "on_peer repeated itself"
        state[node_id] = connected
    return {node_id for node_id, connected in state.items() if connected}


def directions_agree(a: Node, b: Node) -> bool:
    """Each pair keeps one connection: one side dialled it, the other accepted it."""
    mine = {p.node_id: p.outbound for p in a.net.peers()}
    theirs = {p.node_id: p.outbound for p in b.net.peers()}
    return b.id in mine and a.id in theirs and mine[b.id] != theirs[a.id]


# ---- scenarios -----------------------------------------------------------------------------
def test_nodes_find_each_other_authenticate_and_exchange_messages() -> None:
    async def scenario(c: Cluster) -> None:
        hub = await c.start(node_type="super", region="eu")
        others = [
            await c.start(seeds=(hub.address,), node_type=t, region=r)
            for t, r in (("full", "na"), ("light", "ap"), ("full", "eu"))
        ]
        nodes = [hub, *others]
        await until(lambda: mesh_formed(nodes), "a full mesh via peer exchange")
        for n in nodes:
            for info in n.net.peers():
                peer = next(m for m in nodes if m.id == info.node_id)
                assert info.public_key == peer.net.key.public_key
                assert (info.node_type, info.region, info.listen) == (
                    peer.net.node_type,
                    peer.net.region,
                    peer.address,
                )
            assert all(directions_agree(n, m) for m in nodes if m is not n)
            assert told_connected(n) == n.peer_ids()

        sender = others[0]
        assert await sender.net.broadcast(APP, b"to all") == 3
        await until(lambda: all(n.received for n in nodes if n is not sender), "the broadcast")
        await asyncio.sleep(0.2)
        for n in nodes:
            assert n.received == ([] if n is sender else [(sender.id, APP, b"to all")])

        assert await others[1].net.send(others[2].id, APP + 1, b"just you")
        await until(lambda: len(others[2].received) == 2, "the direct message")
        assert others[2].received[-1] == (others[1].id, APP + 1, b"just you")
        assert len(hub.received) == 1 and len(others[0].received) == 0
        assert not await others[1].net.send(crypto.KeyPair.generate().node_id, APP, b"?")

        sent = sender.net.registry.get_sample_value(
            "qnet_p2p_messages_total", {"direction": "out", "kind": str(APP)}
        )
        assert sent == 3
        gauge = sum(
            hub.net.registry.get_sample_value("qnet_peers_connected", {"direction": d})
            for d in ("in", "out")
        )
        assert gauge == 3
        with pytest.raises(ValueError):
            await sender.net.broadcast(wire.KIND_PEERS, b"")  # reserved for the layer

    run(scenario)


def test_peer_exchange_finds_a_peer_known_only_to_a_neighbour() -> None:
    async def scenario(c: Cluster) -> None:
        b = await c.start()
        a = await c.start(seeds=(b.address,))
        await until(lambda: a.peer_ids() == {b.id}, "a to reach its seed")
        late = await c.start(seeds=(b.address,))  # a has never heard of it
        await until(lambda: late.id in a.peer_ids(), "a to learn of the new node through b")
        assert {p.node_id: p.listen for p in a.net.peers()}[late.id] == late.address

    run(scenario)


def test_simultaneous_dials_collapse_to_one_connection() -> None:
    async def scenario(c: Cluster) -> None:
        port_a, port_b = free_port(), free_port()
        key_a, key_b = crypto.KeyPair.generate(), crypto.KeyPair.generate()
        a, b = await asyncio.gather(
            c.start(key=key_a, port=port_a, seeds=(f"127.0.0.1:{port_b}",)),
            c.start(key=key_b, port=port_b, seeds=(f"127.0.0.1:{port_a}",)),
        )
        await until(lambda: directions_agree(a, b), "one connection between a and b")
        await stays(
            lambda: directions_agree(a, b) and len(a.net.peers()) == 1,
            "the connection stays single and stable",
            1.0,
        )
        smaller = a if key_a.public_key < key_b.public_key else b
        assert smaller.net.peers()[0].outbound  # the rule both sides apply alike

    run(scenario)


@pytest.mark.parametrize("differs", ["genesis", "chain"])
def test_a_node_of_another_chain_is_refused_with_a_warning_on_both_sides(
    differs: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qnet.p2p")
    other_genesis = crypto.digest(b"some other genesis")
    theirs = {"genesis_hash": other_genesis} if differs == "genesis" else {"chain_id": "other"}
    ours_text, theirs_text = (
        (GENESIS.hex(), other_genesis.hex())
        if differs == "genesis"
        else (repr(CHAIN), repr("other"))
    )
    what = "genesis hash" if differs == "genesis" else "chain id"

    def warned(about: Node, at: str, theirs: str, ours: str) -> bool:
        return any(
            r.levelno == logging.WARNING
            and r.getMessage().startswith(f"refusing peer {about.id} at {at}")
            and r.getMessage().endswith(f": {what} {theirs} differs from ours {ours}")
            for r in caplog.records
        )

    async def scenario(c: Cluster) -> None:
        ours = await c.start()
        stranger = await c.start(seeds=(ours.address,), **theirs)
        await until(
            lambda: (
                warned(ours, ours.address, ours_text, theirs_text)  # by stranger
                and warned(stranger, "127.0.0.1:", theirs_text, ours_text)
            ),  # by ours
            "both refusals",
        )
        assert ours.net.peers() == [] and stranger.net.peers() == []
        assert ours.dropped("wrong_chain") >= 1 and stranger.dropped("wrong_chain") >= 1

    run(scenario)


def test_an_impostor_cannot_pass_as_another_node(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qnet.p2p")
    victim = crypto.KeyPair.generate()

    async def scenario(c: Cluster) -> None:
        node = await c.start()

        async def impersonate(peer: RawPeer) -> None:
            await peer.handshake(node)  # the node answers before it checks our signature
            assert await peer.closed_by_peer() == aiohttp.WSCloseCode.POLICY_VIOLATION

        await raw_peer(impersonate, key=victim, sign_with=crypto.KeyPair.generate())
        assert node.net.peers() == []
        assert node.dropped("handshake") == 1
        assert f"refusing peer {victim.node_id} at 127.0.0.1:" in caplog.text
        assert "did not prove its key (bad signature)" in caplog.text

        async def be_yourself(peer: RawPeer) -> None:  # the real owner is not banned for it
            await peer.handshake(node)
            await until(lambda: node.peer_ids() == {victim.node_id}, "the real node")

        await raw_peer(be_yourself, key=victim)

    run(scenario)


def test_a_silent_dialler_is_dropped_after_the_handshake_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qnet.p2p")

    async def scenario(c: Cluster) -> None:
        node = await c.start(handshake_timeout_s=0.5)

        async def say_nothing(peer: RawPeer) -> None:
            await peer.connect(node)
            assert await peer.closed_by_peer() == aiohttp.WSCloseCode.POLICY_VIOLATION

        await raw_peer(say_nothing)
        assert node.dropped("handshake") == 1
        assert "no handshake within 0.5 s" in caplog.text

    run(scenario)


def test_connecting_to_yourself_is_detected_and_not_repeated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qnet.p2p")

    async def scenario(c: Cluster) -> None:
        port = free_port()
        node = await c.start(port=port, seeds=(f"localhost:{port}",))
        await until(lambda: "seed localhost:" in caplog.text, "the seed loop to give up")
        assert node.net.peers() == [] and node.dropped("self") >= 1
        assert "is this node; not dialling it" in caplog.text

    run(scenario)


def test_a_stopped_peer_is_noticed_and_redialled_when_it_returns() -> None:
    async def scenario(c: Cluster) -> None:
        key, port = crypto.KeyPair.generate(), free_port()
        seed = await c.start(key=key, port=port)
        node = await c.start(seeds=(seed.address,))
        await until(lambda: node.peer_ids() == {seed.id}, "the first connection")
        await c.stop(seed)
        await until(lambda: node.net.peers() == [], "the loss to be noticed", timeout=1.0)
        await asyncio.sleep(1.0)  # several failed redials: the backoff has grown
        await c.start(key=key, port=port)
        took = await until(lambda: node.peer_ids() == {seed.id}, "the redial", timeout=5.0)
        assert took < 2.5  # backoff so far is 0.2+0.4+0.8 s: the next try is within 1.6 s
        assert node.events == [(seed.id, True), (seed.id, False), (seed.id, True)]

    run(scenario)


def test_frames_queued_before_a_stop_reach_the_peer() -> None:
    """A stopping node sends what it queued (a node's last transactions, say) before it
    closes its connections."""

    async def scenario(c: Cluster) -> None:
        receiver = await c.start()
        stopping = await c.start(seeds=(receiver.address,))
        await until(lambda: stopping.peer_ids() == {receiver.id}, "the connection")
        frames = [i.to_bytes(4, "big") * 2**18 for i in range(40)]  # 40 MiB in all
        for payload in frames:  # queued; the writer has not run yet
            assert await stopping.net.send(receiver.id, APP, payload)
        await c.stop(stopping)
        await until(lambda: len(receiver.received) == len(frames), "every queued frame")
        assert [payload for _, _, payload in receiver.received] == frames

    run(scenario)


def test_a_peer_that_stops_answering_is_dropped_by_the_heartbeat() -> None:
    async def scenario(c: Cluster) -> None:
        node = await c.start(heartbeat_s=0.5)

        async def go_silent(peer: RawPeer) -> None:
            await peer.handshake(node)
            await until(lambda: len(node.net.peers()) == 1, "the raw peer to be admitted")
            # Never reading again means never answering a ping.
            await until(lambda: node.net.peers() == [], "the heartbeat to notice", timeout=3.0)

        await raw_peer(go_silent)
        assert node.dropped("timeout") == 1
        assert node.events[-1][1] is False

    run(scenario)


def test_a_flooding_peer_is_dropped_and_banned(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qnet.p2p")

    flooder = crypto.KeyPair.generate()

    async def scenario(c: Cluster) -> None:
        node = await c.start(rate_limit_per_s=5, burst=10)

        async def flood(peer: RawPeer) -> None:
            await peer.handshake(node)
            for i in range(50):
                await peer.send(p2p.frame(APP, bytes([i])))
            assert await peer.closed_by_peer() == aiohttp.WSCloseCode.POLICY_VIOLATION
            assert peer.ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION

        await raw_peer(flood, key=flooder)
        assert node.dropped("rate_limit") == 1
        assert len(node.received) <= 10
        assert (
            f"dropping peer {flooder.node_id} at 127.0.0.1:" in caplog.text
            and "and banning it for 60 s: more than 5 messages/s" in caplog.text
        )

        async def come_back(peer: RawPeer) -> None:
            await peer.handshake(node)  # the handshake proves the key, then the ban applies
            assert await peer.closed_by_peer() == aiohttp.WSCloseCode.POLICY_VIOLATION

        await raw_peer(come_back, key=flooder)
        assert node.dropped("banned") == 1
        assert node.net.peers() == []

    run(scenario)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "malformed"),
        (bytes([9]), "unknown_kind"),
        (p2p.frame(wire.KIND_HELLO, b"again"), "unknown_kind"),
        (p2p.frame(wire.KIND_PEERS, b"\x00\x01"), "malformed"),  # as the answer it was asked
        (p2p.frame(APP, bytes(2000)), "oversize"),
    ],
)
def test_protocol_violations_drop_and_ban_the_peer(data: bytes, reason: str) -> None:
    async def scenario(c: Cluster) -> None:
        node = await c.start(max_message_bytes=1024)

        async def misbehave(peer: RawPeer) -> None:
            await peer.handshake(node)
            await peer.send(data)
            assert await peer.closed_by_peer() in (
                aiohttp.WSCloseCode.POLICY_VIOLATION,
                aiohttp.WSCloseCode.MESSAGE_TOO_BIG,
            )

        await raw_peer(misbehave)
        assert node.dropped(reason) == 1
        assert node.net.peers() == [] and node.received == []
        with pytest.raises(ValueError):
            await node.net.broadcast(APP, bytes(1024))  # the sender checks the same limit

    run(scenario)


def test_frames_of_kinds_the_node_does_not_speak_are_counted_without_a_series_of_their_own():
    async def scenario(c: Cluster) -> None:
        node = await c.start()
        series = {
            (s.labels["direction"], s.labels["kind"])
            for metric in node.net.registry.collect()
            for s in metric.samples
            if s.name == "qnet_p2p_messages_total"
        }
        assert ("in", str(APP)) in series and ("in", "other") in series  # from the start

        async def stray(peer: RawPeer) -> None:
            await peer.handshake(node)
            await peer.send(p2p.frame(200, b"?"))  # an application kind, but not the node's
            await until(lambda: node.received, "the frame to reach the node")

        await raw_peer(stray)
        count = node.net.registry.get_sample_value
        assert count("qnet_p2p_messages_total", {"direction": "in", "kind": "other"}) == 1
        assert count("qnet_p2p_messages_total", {"direction": "in", "kind": "200"}) is None

    run(scenario)


def test_a_slow_peer_is_dropped_without_holding_up_the_others() -> None:
    async def scenario(c: Cluster) -> None:
        size = 256 * 1024
        node = await c.start(max_message_bytes=size + 1, max_queue_bytes=4 * size, heartbeat_s=30.0)
        fast = await c.start(seeds=(node.address,))
        await until(lambda: len(fast.net.peers()) == 1, "the fast peer")

        async def never_read(peer: RawPeer) -> None:
            await peer.handshake(node)
            await until(lambda: len(node.net.peers()) == 2, "the slow peer")
            sent = 0
            while node.dropped("queue_full") == 0:
                assert sent < 400, "the slow peer was never dropped"
                await node.net.broadcast(APP, sent.to_bytes(4, "big") + bytes(size - 4))
                sent += 1
                await asyncio.sleep(0.005)  # the fast peer keeps up; the slow one cannot
            assert node.peer_ids() == {fast.id}
            await until(lambda: len(fast.received) == sent, "every frame at the fast peer")
            assert [int.from_bytes(p[:4], "big") for _, _, p in fast.received] == list(range(sent))

        await raw_peer(never_read)

    run(scenario)


def test_ban_drops_a_peer_and_refuses_it_until_the_ban_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qnet.p2p")

    async def scenario(c: Cluster) -> None:
        node = await c.start()
        other = await c.start(seeds=(node.address,))
        await until(lambda: node.peer_ids() == {other.id}, "the connection")
        node.net.ban(other.id, "sent an invalid block", seconds=1.0)
        await until(lambda: node.net.peers() == [], "the ban to drop it")
        assert f"banning peer {other.id} for 1 s: sent an invalid block" in caplog.text
        await until(lambda: node.dropped("banned") >= 2, "a refused redial")
        await until(lambda: node.peer_ids() == {other.id}, "the redial after the ban")

    run(scenario)


def test_max_peers_refuses_more_inbound_peers() -> None:
    async def scenario(c: Cluster) -> None:
        node = await c.start(max_peers=1)
        first = await c.start(seeds=(node.address,))
        await until(lambda: node.peer_ids() == {first.id}, "the first peer")
        await c.start(seeds=(node.address,))
        await until(lambda: node.dropped("max_peers") >= 1, "the refusal")
        assert node.peer_ids() == {first.id}

    run(scenario)


def test_a_taken_port_fails_start_without_leaving_anything_running() -> None:
    async def scenario(c: Cluster) -> None:
        taken = await c.start()
        with pytest.raises(OSError):
            await c.start(port=taken.net.listen_port)

    run(scenario)


# ---- the sealed link ---------------------------------------------------------------------
def test_frames_travel_sealed_and_a_tampered_one_closes_the_link_without_a_ban(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qnet.p2p")
    key = crypto.KeyPair.generate()

    async def scenario(c: Cluster) -> None:
        node = await c.start()

        async def tamper(peer: RawPeer) -> None:
            await peer.handshake(node)
            await until(lambda: len(node.net.peers()) == 1, "the raw peer to be admitted")
            secret = b"the payload nobody on the path may read"
            await node.net.broadcast(APP, secret)
            assert await peer.expect(APP) == secret
            assert not any(secret in record for record in peer.records)
            await peer.send(p2p.frame(APP, b"first"))
            await until(lambda: node.received == [(key.node_id, APP, b"first")], "a sealed frame")
            (record,) = peer.seal(p2p.frame(APP, b"second"))
            flipped = bytes([record[0] ^ 1]) + record[1:]
            await peer.ws.send_bytes(flipped)
            assert await peer.closed_by_peer() == aiohttp.WSCloseCode.POLICY_VIOLATION

        await raw_peer(tamper, key=key)
        assert node.dropped("tampered") == 1
        assert node.received == [(key.node_id, APP, b"first")]
        assert "failed authentication (tampered with, replayed, reordered" in caplog.text

        async def come_back(peer: RawPeer) -> None:  # not banned: anyone on the path can
            await peer.handshake(node)
            await until(lambda: node.peer_ids() == {key.node_id}, "the peer back")

        await raw_peer(come_back, key=key)

    run(scenario)


def test_a_replayed_or_unsealed_frame_is_refused() -> None:
    async def scenario(c: Cluster) -> None:
        node = await c.start()

        async def replay(peer: RawPeer) -> None:
            await peer.handshake(node)
            (record,) = peer.seal(p2p.frame(APP, b"pay me once"))
            await peer.ws.send_bytes(record)
            await peer.ws.send_bytes(record)
            assert await peer.closed_by_peer() == aiohttp.WSCloseCode.POLICY_VIOLATION

        async def in_the_clear(peer: RawPeer) -> None:  # what protocol 2 sent
            await peer.handshake(node)
            await peer.ws.send_bytes(p2p.frame(APP, b"plain"))
            assert await peer.closed_by_peer() == aiohttp.WSCloseCode.POLICY_VIOLATION

        await raw_peer(replay)
        await raw_peer(in_the_clear)
        assert [payload for _, _, payload in node.received] == [b"pay me once"]
        assert node.dropped("tampered") == 2

    run(scenario)


def test_frames_of_every_size_cross_a_sealed_link_in_order() -> None:
    async def scenario(c: Cluster) -> None:
        limit = 3 * p2p.RECORD_DATA
        receiver = await c.start(max_message_bytes=limit)
        sender = await c.start(
            seeds=(receiver.address,), max_message_bytes=limit, max_queue_bytes=2**24
        )
        await until(lambda: sender.peer_ids() == {receiver.id}, "the connection")
        sizes = [0, 1, p2p.RECORD_DATA - 5, p2p.RECORD_DATA, p2p.RECORD_DATA + 1, limit - 1]
        payloads = [bytes([i % 256]) * size for i, size in enumerate(sizes * 20)]
        for payload in payloads:
            assert await sender.net.send(receiver.id, APP, payload)
        await until(lambda: len(receiver.received) == len(payloads), "every frame")
        assert [payload for _, _, payload in receiver.received] == payloads

    run(scenario)


# ---- before authentication ---------------------------------------------------------------
def test_a_large_message_before_authentication_is_refused_unread() -> None:
    async def scenario(c: Cluster) -> None:
        node = await c.start()

        async def big_hello(peer: RawPeer) -> None:
            ws = await peer.connect(node)
            await ws.send_bytes(p2p.frame(wire.KIND_HELLO, bytes(p2p.MAX_HANDSHAKE_FRAME)))
            assert await peer.closed_by_peer() == aiohttp.WSCloseCode.POLICY_VIOLATION

        async def huge(peer: RawPeer) -> None:  # over the record limit: the websocket refuses
            ws = await peer.connect(node)
            await ws.send_bytes(bytes(p2p.RECORD_LIMIT + 1))
            assert await peer.closed_by_peer() == aiohttp.WSCloseCode.MESSAGE_TOO_BIG

        await raw_peer(big_hello)
        await raw_peer(huge)
        assert node.dropped("oversize") == 1 and node.dropped("handshake") == 1
        assert node.net.peers() == []

    run(scenario)


def test_a_connection_that_never_asks_for_the_upgrade_is_cut_at_the_deadline() -> None:
    async def scenario(c: Cluster) -> None:
        node = await c.start(handshake_timeout_s=0.5)
        host, port = wire.split_address(node.address)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /p2p HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""
        assert loop.time() - started < 2.0
        writer.close()
        await writer.wait_closed()

    run(scenario)


def test_pending_handshakes_are_capped_per_address_and_overall(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qnet.p2p")

    async def scenario(c: Cluster) -> None:
        node = await c.start(
            handshake_timeout_s=1.0, max_pending_handshakes=3, max_pending_handshakes_per_host=2
        )
        peers = [RawPeer() for _ in range(4)]
        try:
            await peers[0].connect(node)
            await peers[1].connect(node)  # two idle handshakes from 127.0.0.1
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await peers[2].connect(node)
            assert refused.value.status == 503
            assert node.dropped("busy") == 1
            assert "handshakes in progress from 127.0.0.1 (limit 2)" in caplog.text
            # The idle ones are closed at the deadline, which frees their slots.
            for idle in peers[:2]:
                assert await idle.closed_by_peer() == aiohttp.WSCloseCode.POLICY_VIOLATION
            assert node.dropped("handshake") == 2
            await peers[3].handshake(node)
            await until(lambda: len(node.net.peers()) == 1, "a handshake after the idle ones")
        finally:
            for peer in peers:
                await peer.close()

        # Overall: one idle handshake from 127.0.0.2 takes the only slot.
        node.net.max_pending_handshakes = 1
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as other:
            ws = await other.ws_connect(f"http://{node.address}{p2p.PATH}")

            async def refused_too(peer: RawPeer) -> None:
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await peer.connect(node)

            await raw_peer(refused_too)
            assert "handshakes in progress (limit 1)" in caplog.text
            await ws.close()

    run(scenario)


# ---- peer exchange -----------------------------------------------------------------------
def test_unsolicited_peers_are_refused_and_the_sender_banned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qnet.p2p")
    pusher = crypto.KeyPair.generate()

    async def scenario(c: Cluster) -> None:
        node = await c.start()
        elsewhere = await c.start()  # a node the pusher wants ours to dial

        async def push(peer: RawPeer) -> None:
            await peer.handshake(node)
            await peer.expect(wire.KIND_GET_PEERS)
            await peer.send(p2p.frame(wire.KIND_PEERS, wire.Peers(()).encode()))  # the answer
            pushed = wire.PeerRecord(elsewhere.net.key.public_key, "super", "eu", elsewhere.address)
            await peer.send(p2p.frame(wire.KIND_PEERS, wire.Peers((pushed,)).encode()))  # unasked
            assert await peer.closed_by_peer() == aiohttp.WSCloseCode.POLICY_VIOLATION

        await raw_peer(push, key=pusher)
        assert node.dropped("unsolicited") == 1
        assert f"dropping peer {pusher.node_id} at 127.0.0.1:" in caplog.text
        assert "banning it for 60 s: sent PEERS it was not asked for" in caplog.text
        await stays(lambda: node.net.peers() == [], "the pushed node is not dialled", 0.5)

    run(scenario)


def test_a_third_party_cannot_rewrite_where_a_known_node_listens() -> None:
    async def scenario(c: Cluster) -> None:
        victim = await c.start()
        key = crypto.KeyPair.generate()
        policy = PeerPolicy(key.public_key, "full", "eu", frozenset())
        # The raw peers answer no heartbeat: the node must not drop them meanwhile.
        node = await c.start(key=key, node_type="full", policy=policy, heartbeat_s=30.0)

        def answer(*records: wire.PeerRecord) -> Callable[[RawPeer], Awaitable[None]]:
            async def body(peer: RawPeer) -> None:
                await peer.handshake(node)
                await peer.expect(wire.KIND_GET_PEERS)
                await peer.send(p2p.frame(wire.KIND_PEERS, wire.Peers(records).encode()))
                # Frames are read in order: once it answers this, it has read our PEERS.
                await peer.send(p2p.frame(wire.KIND_GET_PEERS))
                await peer.expect(wire.KIND_PEERS)

            return body

        ghost = crypto.KeyPair.generate()  # known, but not answering: it stays a candidate
        ghost_at = f"127.0.0.1:{free_port()}"
        true = [
            wire.PeerRecord(victim.net.key.public_key, "super", "eu", victim.address),
            wire.PeerRecord(ghost.public_key, "super", "eu", ghost_at),
        ]
        await raw_peer(answer(*true))
        await until(lambda: victim.id in node.peer_ids(), "the node to dial the victim")
        lies = [
            wire.PeerRecord(victim.net.key.public_key, "super", "eu", "127.0.0.1:9"),
            wire.PeerRecord(ghost.public_key, "super", "eu", "127.0.0.1:9"),
            wire.PeerRecord(crypto.KeyPair.generate().public_key, "full", "eu", victim.address),
        ]
        await raw_peer(answer(*lies))
        assert node.net._known.get(victim.id).listen == victim.address
        assert node.net._known.get(ghost.node_id).listen == ghost_at
        assert len(node.net._known) == 2  # the claim on the victim's address was refused

    run(scenario)


# ---- slots ---------------------------------------------------------------------------------
def test_an_activated_node_takes_a_strangers_slot_on_a_full_validator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qnet.p2p")
    me, member = crypto.KeyPair.generate(), crypto.KeyPair.generate()
    policy = PeerPolicy(me.public_key, "super", "eu", frozenset({me.public_key}), followers_max=1)
    activated: set[bytes] = {member.public_key}

    async def scenario(c: Cluster) -> None:
        validator = await c.start(
            key=me, policy=policy, is_activated=lambda peer: peer.public_key in activated
        )
        stranger = await c.start(node_type="full", seeds=(validator.address,))
        await until(lambda: validator.peer_ids() == {stranger.id}, "the stranger to get in")
        another = await c.start(node_type="full", seeds=(validator.address,))
        await until(lambda: validator.dropped("topology") >= 1, "the next stranger's refusal")
        await c.stop(another)
        node = await c.start(key=member, node_type="full", seeds=(validator.address,))
        await until(lambda: validator.peer_ids() == {node.id}, "the activated node to get in")
        assert validator.dropped("evicted") == 1
        assert f"dropping peer {stranger.id} at 127.0.0.1:" in caplog.text
        assert f"its slot goes to {node.id}, an activated full node" in caplog.text
        # The evicted stranger dials again and is refused: the activated node keeps its slot.
        refused = validator.dropped("topology")
        await until(lambda: validator.dropped("topology") > refused, "the stranger's redial")
        assert validator.peer_ids() == {node.id}

    run(scenario)
