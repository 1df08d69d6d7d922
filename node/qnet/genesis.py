"""The genesis file: chain id, validator set, initial balances and chain parameters."""

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from . import crypto
from .amounts import MAX_AMOUNT, MAX_SUPPLY, UNITS_PER_QNC

REGIONS = ("na", "sa", "eu", "af", "ap", "me", "oc")
NODE_TYPES = ("super", "full", "light")


# Parameters added after networks were created. At their default they are left out of the
# canonical JSON, so a genesis file written before them (which lacks them and so gets the
# default) keeps its hash, and with it every data dir and peer link of its network.
LATER_PARAMS = ("max_block_bytes",)


class GenesisError(ValueError):
    pass


@dataclass(frozen=True)
class Params:
    """Chain parameters; amounts in base units. Epochs are cut by block time (see ledger)."""

    block_interval_ms: int = 200  # minimum time between blocks
    max_block_txs: int = 20_000
    # Bytes of a block's transactions as they travel (``tx.encode_batch``, the block body).
    max_block_bytes: int = 4 * 2**20
    min_fee: int = 1_000
    epoch_ms: int = 3_600_000
    epoch_emission: int = 1_000 * UNITS_PER_QNC  # minted per epoch, shared by eligible nodes
    super_fee_percent: int = 70  # of an epoch's fees to super nodes; the rest to full nodes
    activation_fee_super: int = 10_000 * UNITS_PER_QNC  # burned by the activate transaction
    activation_fee_full: int = 1_000 * UNITS_PER_QNC
    activation_fee_light: int = 100 * UNITS_PER_QNC

    def activation_fee(self, node_type: str) -> int:
        return getattr(self, f"activation_fee_{node_type}")


@dataclass(frozen=True)
class Validator:
    node_id: str
    power: int
    region: str

    @property
    def public_key(self) -> bytes:
        return crypto.decode_node_id(self.node_id)


@dataclass(frozen=True)
class Seed:
    node_id: str
    region: str
    api_url: str


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    validators: tuple[Validator, ...]
    balances: dict[str, int]
    params: Params = field(default_factory=Params)
    seeds: tuple[Seed, ...] = ()

    def to_json(self) -> dict:
        data = asdict(self)
        data["validators"] = [asdict(v) for v in self.validators]
        data["seeds"] = [asdict(s) for s in self.seeds]
        data["balances"] = {addr: str(units) for addr, units in sorted(self.balances.items())}
        defaults = asdict(Params())
        for name in LATER_PARAMS:
            if data["params"][name] == defaults[name]:
                del data["params"][name]
        return data

    @cached_property
    def hash(self) -> bytes:
        """Of the canonical JSON; computed once (a genesis is never changed once made, and
        its balances can run to many thousands: the status endpoint shows the hash)."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return crypto.digest(canonical.encode())

    @property
    def network(self) -> crypto.Network:
        """What every signature on this chain is bound to (see ``crypto.tagged``)."""
        return crypto.Network(self.chain_id, self.hash)

    @property
    def total_supply(self) -> int:
        return sum(self.balances.values())

    def account_balances(self) -> dict[bytes, int]:
        return {crypto.decode_address(a): units for a, units in self.balances.items()}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, data: dict) -> "Genesis":
        try:
            genesis = cls(
                chain_id=data["chain_id"],
                genesis_time_ms=int(data["genesis_time_ms"]),
                validators=tuple(Validator(**v) for v in data["validators"]),
                balances={a: int(u) for a, u in data["balances"].items()},
                params=Params(**data.get("params", {})),
                seeds=tuple(Seed(**s) for s in data.get("seeds", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GenesisError(f"genesis is malformed: {exc}") from None
        genesis.validate()
        return genesis

    @classmethod
    def load(cls, path: Path) -> "Genesis":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise GenesisError(f"cannot read genesis {path}: {exc}") from None
        return cls.from_json(data)

    def validate(self) -> None:
        if not self.chain_id or len(self.chain_id.encode()) > 64:
            raise GenesisError("chain_id must be 1..64 bytes")
        if not self.validators:
            raise GenesisError("genesis lists no validators")
        for v in self.validators:
            try:
                v.public_key  # noqa: B018 - decoding is the check
            except crypto.EncodingError as exc:
                raise GenesisError(str(exc)) from None
            if v.power <= 0:
                raise GenesisError(f"validator {v.node_id} has non-positive power")
            if v.region not in REGIONS:
                raise GenesisError(f"validator {v.node_id} has unknown region {v.region!r}")
        if len({v.node_id for v in self.validators}) != len(self.validators):
            raise GenesisError("a validator is listed twice")
        for addr, units in self.balances.items():
            try:
                crypto.decode_address(addr)
            except crypto.EncodingError as exc:
                raise GenesisError(str(exc)) from None
            if units <= 0:
                raise GenesisError(f"balance of {addr} must be positive")
        if self.total_supply > MAX_SUPPLY:
            raise GenesisError(f"total supply exceeds {MAX_SUPPLY} base units")
        p = self.params
        if not all(type(value) is int for value in asdict(p).values()):
            raise GenesisError("params must be integers")
        if p.block_interval_ms < 0 or p.max_block_txs <= 0 or p.min_fee < 0 or p.epoch_ms <= 0:
            raise GenesisError("params out of range")
        if p.max_block_bytes <= 0:
            raise GenesisError("max_block_bytes must be positive")
        fees = [p.activation_fee(t) for t in NODE_TYPES]
        if not all(0 <= units <= MAX_AMOUNT for units in [p.min_fee, p.epoch_emission, *fees]):
            raise GenesisError("fees and emission must fit an unsigned 64-bit integer")
        if not 0 <= p.super_fee_percent <= 100:
            raise GenesisError("super_fee_percent must be 0..100")


def make_genesis(
    chain_id: str,
    validators: list[tuple[str, str]],
    balances: dict[str, int],
    params: Params | None = None,
    genesis_time_ms: int = 0,
    seeds: tuple[Seed, ...] = (),
) -> Genesis:
    """A genesis whose validators (node id, region) have equal voting power."""
    genesis = Genesis(
        chain_id,
        genesis_time_ms,
        tuple(Validator(node_id, 1, region) for node_id, region in validators),
        dict(balances),
        params or Params(),
        tuple(seeds),
    )
    genesis.validate()
    return genesis
