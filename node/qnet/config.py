"""Node configuration: one dataclass, read from ``<data_dir>/config.toml`` plus flags.

Every default is here. Flags given on the command line win over the file.
"""

import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .genesis import NODE_TYPES, REGIONS
from .p2p import split_address


class ConfigError(ValueError):
    pass


@dataclass
class NodeConfig:
    data_dir: Path
    node_type: str = "super"
    # A region code, "auto" to pick by round-trip time to the seeds, or None for the region
    # genesis.json gives this node as a validator.
    region: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 7370
    p2p_host: str = "127.0.0.1"
    p2p_port: int = 7371
    peers: list[str] = field(default_factory=list)  # "host:port" of peers to keep dialled
    # Consensus round timeouts: base + delta * round (Tendermint's defaults are 3 s / 1 s).
    timeout_propose_ms: int = 3000
    timeout_vote_ms: int = 1000
    timeout_delta_ms: int = 500
    # An idle chain still makes a block this often, so a stalled chain is visible.
    empty_block_interval_ms: int = 1000
    mempool_shards: int = 16
    mempool_capacity: int = 200_000
    mempool_per_sender: int = 1_000
    mempool_ttl_s: float = 600.0
    verify_threads: int = 2
    max_batch_bytes: int = 8 * 1024 * 1024
    max_batch_txs: int = 20_000
    max_json_bytes: int = 64 * 1024
    log_level: str = "INFO"

    @property
    def genesis_path(self) -> Path:
        return self.data_dir / "genesis.json"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "node_key"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "chain.db"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "node.pid"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "node.log"

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.api_host in ("0.0.0.0", "") else self.api_host
        return f"http://{host}:{self.api_port}"

    def validate(self) -> None:
        if self.node_type not in NODE_TYPES:
            raise ConfigError(f"node type must be one of {', '.join(NODE_TYPES)}")
        if self.region not in (None, "auto", *REGIONS):
            raise ConfigError(f"region must be auto or one of {', '.join(REGIONS)}")
        for name in ("api_port", "p2p_port"):
            if not 0 < getattr(self, name) < 65536:
                raise ConfigError(f"{name} must be 1..65535")
        for peer in self.peers:
            try:
                split_address(peer)
            except ValueError:
                raise ConfigError(f"peer {peer!r} must be host:port") from None
        if not 0 < self.empty_block_interval_ms < self.timeout_propose_ms:
            raise ConfigError(
                "empty_block_interval_ms must be below timeout_propose_ms, or validators "
                "give up on an idle proposer"
            )
        for name in (
            "timeout_vote_ms",
            "timeout_delta_ms",
            "mempool_shards",
            "mempool_capacity",
            "mempool_per_sender",
            "verify_threads",
            "max_batch_bytes",
            "max_batch_txs",
            "max_json_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")


def load_config(data_dir: Path, **overrides) -> NodeConfig:
    """Defaults, then ``config.toml`` in the data dir, then non-None overrides."""
    data_dir = Path(data_dir).resolve()
    values: dict = {}
    path = data_dir / "config.toml"
    known = {f.name for f in fields(NodeConfig)} - {"data_dir"}
    if path.exists():
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = NodeConfig(data_dir=data_dir, **values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    config.validate()
    return config


def write_config(path: Path, values: dict) -> None:
    """Write settings as config.toml (strings, integers, booleans and lists of strings)."""
    # JSON scalars and arrays of strings are valid TOML as they are.
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
