"""Bad input gets a 4xx JSON error whose code and message say what is wrong, and changes
nothing: no block, no state change, no balance or nonce moved, nothing in the mempool."""

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from qnet import crypto, tx
from qnet.config import NodeConfig
from qnet.genesis import Params
from qnet.localnode import CHAIN_ID, NO_EMPTY_BLOCKS, LocalNode, http

FUNDS = 1_000 * 10**9
FEE = Params().min_fee
MAX_JSON_BYTES = NodeConfig.max_json_bytes  # the defaults the node under test runs with
MAX_BATCH_BYTES = NodeConfig.max_batch_bytes
U64 = 2**64


@dataclass
class Chain:
    node: LocalNode
    alice: crypto.KeyPair  # funded; nonce 0 is committed
    bob: crypto.KeyPair  # funded; never sent anything
    carol: crypto.KeyPair  # recipient of every attempted transfer; unknown to the chain
    baseline: dict

    def transfer(
        self,
        nonce: int = 1,
        fee: int = FEE,
        amount: int = 10**9,
        chain_id: str = CHAIN_ID,
        genesis_hash: bytes | None = None,
    ) -> tx.Transaction:
        """Signed for the node's network, or with another chain id or genesis hash."""
        genesis_hash = genesis_hash or self.node.genesis.network.genesis_hash
        network = crypto.Network(chain_id, genesis_hash)
        return tx.make_transfer(self.alice, network, nonce, fee, self.carol.address, amount)

    def tx_json(self, **changes) -> dict:
        """A valid transfer's JSON with ``changes`` applied (a value of None drops the field)."""
        obj = self.transfer().to_json()
        for name, value in changes.items():
            if value is None:
                del obj[name]
            else:
                obj[name] = value
        return obj


def snapshot(node: LocalNode, keys: list[crypto.KeyPair]) -> dict:
    status = node.status()
    accounts = {}
    for key in keys:
        code, body = node.get(f"/api/v1/accounts/{crypto.encode_address(key.address)}")
        assert code == 200, body
        accounts[body["address"]] = (body["balance"], body["nonce"], body["pending"])
    return {
        "height": status["height"],
        "block_hash": status["block_hash"],
        "state_digest": status["state_digest"],
        "mempool_size": status["mempool_size"],
        "accounts": accounts,
    }


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    alice, bob, carol = (crypto.KeyPair.generate() for _ in range(3))
    node = LocalNode.single(
        tmp_path_factory.mktemp("bad-input"),
        {alice.address: FUNDS, bob.address: FUNDS},
        config=NO_EMPTY_BLOCKS,
    )
    node.start()
    try:
        first = tx.make_transfer(alice, node.genesis.network, 0, FEE, bob.address, 10**9)
        code, body = node.post("/api/v1/transactions", json.dumps(first.to_json()).encode())
        assert code == 202, body
        assert node.wait_committed(first.id)["status"] == "committed"
        deadline = time.monotonic() + 10
        while node.status()["mempool_size"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        c = Chain(node, alice, bob, carol, {})
        c.baseline = snapshot(node, [alice, bob, carol])
        assert c.baseline["height"] == 1
        assert c.baseline["accounts"][crypto.encode_address(alice.address)][1] == 1
        yield c
    finally:
        node.stop()


@dataclass
class Request:
    method: str
    path: str
    body: bytes | None = None
    content_type: str = "application/json"
    tx_id: bytes | None = None  # the id of a transaction that decoded but was refused


def post_json(obj: object) -> Request:
    return Request("POST", "/api/v1/transactions", json.dumps(obj).encode())


def post_tx(t: tx.Transaction) -> Request:
    return Request("POST", "/api/v1/transactions", json.dumps(t.to_json()).encode(), tx_id=t.id)


def post_raw(body: bytes, content_type: str = "application/json") -> Request:
    return Request("POST", "/api/v1/transactions", body, content_type)


def post_batch(body: bytes, content_type: str = "application/octet-stream") -> Request:
    return Request("POST", "/api/v1/transactions/batch", body, content_type)


def forged(c: Chain) -> Request:
    good = c.transfer()
    signature = bytes([good.signature[0] ^ 1]) + good.signature[1:]
    obj = {**c.tx_json(id=None), "signature": signature.hex()}
    return Request(
        "POST", "/api/v1/transactions", json.dumps(obj).encode(), tx_id=tx.from_json(obj).id
    )


def wrong_prefix(c: Chain) -> str:
    return c.node.key.node_id  # a node id pasted where an address belongs


def bad_checksum(c: Chain) -> str:
    text = crypto.encode_address(c.bob.address)
    return text[:-1] + ("q" if text[-1] != "q" else "p")


# name -> (request, status, error code, what the message must say)
CASES: dict[str, tuple[Callable[[Chain], Request], int, str, str]] = {
    "malformed_json": (
        lambda c: post_raw(b'{"kind": "transfer",'),
        400,
        "malformed",
        r"not valid JSON",
    ),
    "invalid_utf8": (
        lambda c: post_raw(b'{"kind": "\xff"}'),
        400,
        "malformed",
        r"not valid JSON.*utf-8",
    ),
    "json_nested_too_deep": (
        lambda c: post_raw(b"[" * 60_000),
        400,
        "malformed",
        r"not valid JSON.*recursion",
    ),
    "json_number_too_long": (
        lambda c: post_raw(b"1" * 5000),
        400,
        "malformed",
        r"not valid JSON.*digits",
    ),
    "json_not_an_object": (
        lambda c: post_json([c.tx_json()]),
        400,
        "malformed",
        r"must be a JSON object",
    ),
    "missing_field": (
        lambda c: post_json(c.tx_json(signature=None)),
        400,
        "malformed",
        r"missing field\(s\): signature",
    ),
    "unknown_field": (
        lambda c: post_json(c.tx_json(memo="hi")),
        400,
        "malformed",
        r"unknown field\(s\): memo",
    ),
    "from_is_not_the_signer": (
        lambda c: post_json(c.tx_json(**{"from": crypto.encode_address(c.bob.address)})),
        400,
        "malformed",
        r"from is not the address of public_key",
    ),
    "unknown_kind": (
        lambda c: post_json(c.tx_json(kind="mint")),
        400,
        "malformed",
        r"unknown transaction kind 'mint'",
    ),
    "id_does_not_match": (
        lambda c: post_json(c.tx_json(id="00" * 32)),
        400,
        "malformed",
        r"id does not match",
    ),
    "public_key_wrong_length": (
        lambda c: post_json(c.tx_json(id=None, public_key="ab" * 31)),
        400,
        "malformed",
        r"public_key must be 32 bytes",
    ),
    "public_key_hex_with_spaces": (
        lambda c: post_json(
            c.tx_json(
                id=None,
                public_key=" ".join(c.tx_json()["public_key"][i : i + 2] for i in range(0, 64, 2)),
            )
        ),
        400,
        "malformed",
        r"public_key must be a string of hex digits",
    ),
    "signature_not_hex": (
        lambda c: post_json(c.tx_json(id=None, signature="zz" * 64)),
        400,
        "malformed",
        r"signature must be a string of hex digits",
    ),
    "text_plain_to_json_endpoint": (
        lambda c: post_raw(b"{}", "text/plain"),
        415,
        "unsupported_media_type",
        r"must be application/json, not 'text/plain'",
    ),
    "json_without_content_type": (
        lambda c: post_raw(b"{}", ""),
        415,
        "unsupported_media_type",
        r"must be application/json, not missing",
    ),
    "batch_without_content_type": (
        lambda c: post_batch(b"\0\1x", ""),
        415,
        "unsupported_media_type",
        r"must be application/octet-stream, not missing",
    ),
    "json_to_batch_endpoint": (
        lambda c: post_batch(b"{}", "application/json"),
        415,
        "unsupported_media_type",
        r"must be application/octet-stream, not 'application/json'",
    ),
    "oversized_json_body": (
        lambda c: post_raw(b'{"pad": "' + b"x" * MAX_JSON_BYTES + b'"}'),
        413,
        "too_large",
        rf"larger than {MAX_JSON_BYTES} bytes",
    ),
    "oversized_batch": (
        lambda c: post_batch(b"\0" * (MAX_BATCH_BYTES + 1)),
        413,
        "too_large",
        rf"larger than {MAX_BATCH_BYTES} bytes",
    ),
    "batch_truncated_frame": (
        lambda c: post_batch(b"\x01\x00" + b"x" * 10),
        400,
        "malformed",
        r"frame at byte 0 is empty or truncated",
    ),
    "batch_truncated_length_prefix": (
        lambda c: post_batch(tx.encode_batch([c.transfer()]) + b"\x01"),
        400,
        "malformed",
        r"truncated in the length prefix",
    ),
    "batch_zero_length_frame": (
        lambda c: post_batch(b"\0\0"),
        400,
        "malformed",
        r"frame at byte 0 is empty",
    ),
    "batch_empty": (lambda c: post_batch(b""), 400, "malformed", r"batch is empty"),
    "bad_signature": (forged, 422, "bad_signature", r"signature does not verify"),
    "signed_for_another_genesis": (
        lambda c: post_tx(c.transfer(genesis_hash=bytes(32))),
        422,
        "bad_signature",
        r"does not verify .* on chain 'qnet-local' \(genesis [0-9a-f]{16}\): it may be signed "
        r"for another network with this chain id",
    ),
    "wrong_chain_id": (
        lambda c: post_tx(c.transfer(chain_id="qnet-other")),
        422,
        "wrong_chain",
        r"for chain 'qnet-other', not 'qnet-local'",
    ),
    "chain_id_lone_surrogate": (
        lambda c: post_json(c.tx_json(id=None, chain_id="\ud800")),
        400,
        "malformed",
        r"chain id is not valid Unicode",
    ),
    "chain_id_empty": (
        lambda c: post_json(c.tx_json(id=None, chain_id="")),
        400,
        "malformed",
        r"chain id must be 1\.\.64 bytes",
    ),
    "replayed_nonce": (
        lambda c: post_tx(c.transfer(nonce=0, amount=5)),
        422,
        "stale_nonce",
        r"nonce 0 already used \(next is 1\)",
    ),
    "future_nonce": (
        lambda c: post_tx(c.transfer(nonce=5)),
        422,
        "nonce_gap",
        r"nonce 5 is ahead of the next usable nonce 1",
    ),
    "overdraft": (
        lambda c: post_tx(c.transfer(amount=2 * FUNDS)),
        422,
        "insufficient_funds",
        r"exceeds the balance",
    ),
    "fee_below_minimum": (
        lambda c: post_tx(c.transfer(fee=FEE - 1)),
        422,
        "fee_too_low",
        rf"fee {FEE - 1} is below the minimum {FEE}",
    ),
    "zero_amount": (
        lambda c: post_json(c.tx_json(id=None, amount="0")),
        400,
        "malformed",
        r"amount must be positive",
    ),
    "negative_amount": (
        lambda c: post_json(c.tx_json(id=None, amount="-5")),
        400,
        "malformed",
        r"amount must be a string of decimal digits",
    ),
    "amount_overflows_u64": (
        lambda c: post_json(c.tx_json(id=None, amount=str(U64))),
        400,
        "malformed",
        r"amount overflows an unsigned 64-bit integer",
    ),
    "amount_float_string": (
        lambda c: post_json(c.tx_json(id=None, amount="1.5")),
        400,
        "malformed",
        r"amount must be a string of decimal digits",
    ),
    "amount_float_number": (
        lambda c: post_json(c.tx_json(id=None, amount=1.5)),
        400,
        "malformed",
        r"amount must be a string of decimal digits",
    ),
    "amount_json_integer": (
        lambda c: post_json(c.tx_json(id=None, amount=10**9)),
        400,
        "malformed",
        r"amount must be a string of decimal digits",
    ),
    "fee_overflows_u64": (
        lambda c: post_json(c.tx_json(id=None, fee="9" * 21)),
        400,
        "malformed",
        r"fee overflows an unsigned 64-bit integer",
    ),
    "nonce_negative": (
        lambda c: post_json(c.tx_json(id=None, nonce=-1)),
        400,
        "malformed",
        r"nonce must be an unsigned 64-bit integer",
    ),
    "nonce_overflows_u64": (
        lambda c: post_json(c.tx_json(id=None, nonce=U64)),
        400,
        "malformed",
        r"nonce must be an unsigned 64-bit integer",
    ),
    "nonce_as_string": (
        lambda c: post_json(c.tx_json(id=None, nonce="1")),
        400,
        "malformed",
        r"nonce must be an integer",
    ),
    "recipient_bad_checksum": (
        lambda c: post_json(c.tx_json(id=None, to=bad_checksum(c))),
        400,
        "malformed",
        r"not valid bech32 .*checksum",
    ),
    "recipient_wrong_prefix": (
        lambda c: post_json(c.tx_json(id=None, to=wrong_prefix(c))),
        400,
        "malformed",
        r"must start with qnc1",
    ),
    "account_bad_checksum": (
        lambda c: Request("GET", f"/api/v1/accounts/{bad_checksum(c)}"),
        400,
        "malformed",
        r"not valid bech32 .*checksum",
    ),
    "account_wrong_prefix": (
        lambda c: Request("GET", f"/api/v1/accounts/{wrong_prefix(c)}"),
        400,
        "malformed",
        r"must start with qnc1",
    ),
    "tx_id_not_hex": (
        lambda c: Request("GET", "/api/v1/transactions/" + "zz" * 32),
        400,
        "malformed",
        r"transaction id must be 64 hex characters",
    ),
    "tx_id_too_short": (
        lambda c: Request("GET", "/api/v1/transactions/" + "a" * 63),
        400,
        "malformed",
        r"transaction id must be 64 hex characters",
    ),
    "tx_id_with_spaces": (
        lambda c: Request("GET", "/api/v1/transactions/" + "ab%20" * 32),
        400,
        "malformed",
        r"transaction id must be 64 hex characters",
    ),
    "tx_id_unknown": (
        lambda c: Request("GET", "/api/v1/transactions/" + "ab" * 32),
        404,
        "not_found",
        r"no pending, committed or recently rejected transaction",
    ),
    "block_height_not_integer": (
        lambda c: Request("GET", "/api/v1/blocks/abc"),
        400,
        "malformed",
        r"height must be a non-negative integer",
    ),
    "block_height_negative": (
        lambda c: Request("GET", "/api/v1/blocks/-1"),
        400,
        "malformed",
        r"height must be a non-negative integer",
    ),
    "block_height_fraction": (
        lambda c: Request("GET", "/api/v1/blocks/1.5"),
        400,
        "malformed",
        r"height must be a non-negative integer",
    ),
    "block_height_unknown": (
        lambda c: Request("GET", "/api/v1/blocks/99"),
        404,
        "not_found",
        r"no committed block at height 99 \(head is 1\)",
    ),
    "blocks_from_not_integer": (
        lambda c: Request("GET", "/api/v1/blocks?from=x"),
        400,
        "malformed",
        r"from must be a non-negative integer",
    ),
    "blocks_from_zero": (
        lambda c: Request("GET", "/api/v1/blocks?from=0"),
        400,
        "malformed",
        r"from must be at least 1",
    ),
    "blocks_to_below_from": (
        lambda c: Request("GET", "/api/v1/blocks?from=3&to=2"),
        400,
        "malformed",
        r"to \(2\) must not be below from \(3\)",
    ),
    "unknown_route": (
        lambda c: Request("GET", "/api/v2/status"),
        404,
        "not_found",
        r"no route for GET /api/v2/status",
    ),
    "wrong_method": (
        lambda c: Request("DELETE", "/api/v1/status"),
        405,
        "method_not_allowed",
        r"DELETE is not allowed on /api/v1/status",
    ),
    "get_on_submit_endpoint": (
        lambda c: Request("GET", "/api/v1/transactions"),
        405,
        "method_not_allowed",
        r"allowed: POST",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_is_refused_and_changes_nothing(chain, name):
    build, status, code, message = CASES[name]
    req = build(chain)
    got_status, body = http(
        req.method, chain.node.url + req.path, req.body, req.content_type, timeout=30
    )
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert (got_status, body["error"]["code"]) == (status, code), body
    assert re.search(message, body["error"]["message"], re.IGNORECASE), body
    if req.tx_id is not None:  # it decoded, so the node remembers why it was refused
        got_status, found = chain.node.get(f"/api/v1/transactions/{req.tx_id.hex()}")
        assert got_status == 200, found
        assert (found["status"], found["reason"]) == ("rejected", code), found
        assert found["message"] == body["error"]["message"]
    assert snapshot(chain.node, [chain.alice, chain.bob, chain.carol]) == chain.baseline


def test_batch_refuses_bad_transactions_by_index_and_admits_none_of_them(chain):
    good_but_stale = chain.transfer(nonce=0, amount=3)
    wrong_version = bytearray(chain.transfer().raw)
    wrong_version[64] = 9
    frames = [b"\x00" * 10, bytes(wrong_version), good_but_stale.raw, b"\xff" * 2000]
    body = b"".join(len(f).to_bytes(2, "big") + f for f in frames)
    got_status, result = http(
        "POST", chain.node.url + "/api/v1/transactions/batch", body, "application/octet-stream"
    )
    assert got_status == 200, result
    assert result["accepted"] == 0
    assert [(r["index"], r["code"]) for r in result["rejected"]] == [
        (0, "malformed"),
        (1, "malformed"),
        (2, "stale_nonce"),
        (3, "malformed"),
    ]
    messages = [r["message"] for r in result["rejected"]]
    assert "truncated" in messages[0]
    assert "unsupported transaction version 9" in messages[1]
    assert "nonce 0 already used" in messages[2]
    assert "larger than 1024 bytes" in messages[3]
    got_status, found = chain.node.get(f"/api/v1/transactions/{good_but_stale.id.hex()}")
    assert (got_status, found["status"], found["reason"]) == (200, "rejected", "stale_nonce")
    assert snapshot(chain.node, [chain.alice, chain.bob, chain.carol]) == chain.baseline


def test_nothing_changed_after_all_bad_requests(chain):
    assert snapshot(chain.node, [chain.alice, chain.bob, chain.carol]) == chain.baseline
    assert chain.node.status()["height"] == 1


def test_batch_admits_good_transactions_beside_bad_ones(node, wallets):
    alice, sink = wallets[0], crypto.KeyPair.generate().address
    first = tx.make_transfer(alice, node.genesis.network, 0, FEE, sink, 10**9)
    second = tx.make_transfer(alice, node.genesis.network, 1, FEE, sink, 2 * 10**9)
    frames = [first.raw, b"not a transaction", second.raw]
    body = b"".join(len(f).to_bytes(2, "big") + f for f in frames)
    got_status, result = http(
        "POST", node.url + "/api/v1/transactions/batch", body, "application/octet-stream"
    )
    assert got_status == 200, result
    assert result["accepted"] == 2
    assert [(r["index"], r["code"]) for r in result["rejected"]] == [(1, "malformed")]
    assert node.wait_committed(first.id)["status"] == "committed"
    assert node.wait_committed(second.id)["status"] == "committed"
    got_status, account = node.get(f"/api/v1/accounts/{crypto.encode_address(sink)}")
    assert (got_status, account["balance"]) == (200, str(3 * 10**9))


def test_batch_with_too_many_frames_is_refused_whole(node, wallets):
    """More frames than max_batch_txs: 413, nothing admitted (cheap 1-byte frames)."""
    before = node.status()
    code, body = node.post(
        "/api/v1/transactions/batch", b"\x00\x01\x00" * 20_001, "application/octet-stream"
    )
    assert code == 413 and body["error"]["code"] == "too_large"
    assert "at most 20000" in body["error"]["message"]
    after = node.status()
    assert (after["height"], after["mempool_size"]) == (before["height"], before["mempool_size"])
