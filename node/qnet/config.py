"""Node configuration: one dataclass, read from ``<data_dir>/config.toml`` plus flags.

Every default is here. Flags given on the command line win over the file.
"""

import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .genesis import NODE_TYPES, REGIONS
from .wire import split_address


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
    # Per client address (an IPv6 client by its /64) of the HTTP API, as token buckets:
    # transactions submitted a second, and how many at once (at least max_batch_txs, so any
    # valid batch can pass); requests a second to the block and node reads, and at once.
    # Loopback is not exempt: these defaults leave room for a load campaign through one
    # address (bench.py sends 12,000 tx/s in batches of 500).
    api_submit_rate: float = 25_000.0
    api_submit_burst: int = 50_000
    api_read_rate: float = 500.0
    api_read_burst: int = 1_000
    # Open HTTP connections in all and from one client; a request on a connection past either
    # is answered 429 and the connection closed.
    api_max_connections: int = 1_024
    api_max_client_connections: int = 256
    # A connection is closed when a request's headers are not in within this time (from
    # its opening or the previous answer; also how long an idle keep-alive connection
    # stays); a body not in within it is answered 408.
    api_request_timeout_s: float = 30.0
    log_level: str = "INFO"
    # Journal accepted transactions (mempool.journal) so a crash loses none of them.
    journal: bool = True

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

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "mempool.journal"


MAX_MS = 2**31 - 1  # what asyncio's timers and a signed 32-bit field hold
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FLAGS = {"node_type": "--type", "peers": "--peer"}  # flags not named after their setting


def _integer(low: int, high: int) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return None
        return f"must be an integer from {low} to {high}"

    return check


def _number(high: float) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= high:
            return None
        return f"must be a number above 0 and at most {high:g}"

    return check


def _choice(choices: tuple[str, ...], fold_case: bool = False) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if isinstance(value, str) and (value.upper() if fold_case else value) in choices:
            return None
        return f"must be one of {', '.join(choices)}"

    return check


def _string(value: object) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _peers(value: object) -> str | None:
    if not isinstance(value, list):
        return 'must be a list of "host:port" strings'
    for peer in value:
        try:
            if not isinstance(peer, str):
                raise ValueError(peer)
            split_address(peer)
        except ValueError:
            return f'must be a list of "host:port" strings; {json.dumps(peer, default=str)} is not'
    return None


# The type and range of every setting: its check returns what is wrong, or None.
RULES: dict[str, Callable[[object], str | None]] = {
    "node_type": _choice(NODE_TYPES),
    "region": _choice(("auto", *REGIONS)),
    "api_host": _string,
    "api_port": _integer(1, 65535),
    "p2p_host": _string,
    "p2p_port": _integer(1, 65535),
    "peers": _peers,
    "timeout_propose_ms": _integer(1, MAX_MS),
    "timeout_vote_ms": _integer(1, MAX_MS),
    "timeout_delta_ms": _integer(1, MAX_MS),
    "empty_block_interval_ms": _integer(1, MAX_MS),
    "mempool_shards": _integer(1, 4096),
    "mempool_capacity": _integer(1, 100_000_000),
    "mempool_per_sender": _integer(1, 1_000_000),
    "mempool_ttl_s": _number(30 * 86400),
    "verify_threads": _integer(1, 256),
    "max_batch_bytes": _integer(1, 2**30),
    "max_batch_txs": _integer(1, 1_000_000),
    "max_json_bytes": _integer(1, 2**24),
    "api_submit_rate": _number(1e9),
    "api_submit_burst": _integer(1, 10**9),
    "api_read_rate": _number(1e9),
    "api_read_burst": _integer(1, 10**9),
    "api_max_connections": _integer(1, 1_000_000),
    "api_max_client_connections": _integer(1, 1_000_000),
    "api_request_timeout_s": _number(3600),
    "log_level": _choice(LOG_LEVELS, fold_case=True),
    "journal": _boolean,
}


def check_settings(values: dict, source: dict[str, str]) -> None:
    """Refuse the first setting of the wrong type or out of range, naming it and where it
    came from (``source[name]``: the file, or the flag); also the settings that only make
    sense together."""
    for name, value in values.items():
        problem = RULES[name](value)
        if problem is not None:
            shown = json.dumps(value, default=str)
            raise ConfigError(f"{source[name]}: {name} = {shown}: {problem}")
    interval = values.get("empty_block_interval_ms", NodeConfig.empty_block_interval_ms)
    propose = values.get("timeout_propose_ms", NodeConfig.timeout_propose_ms)
    if interval >= propose:
        where = source.get("empty_block_interval_ms") or source["timeout_propose_ms"]
        raise ConfigError(
            f"{where}: empty_block_interval_ms = {interval} must be below timeout_propose_ms = "
            f"{propose}, or validators give up on an idle proposer"
        )
    _at_least(values, source, "api_submit_burst", "max_batch_txs", "or a full batch never passes")
    _at_least(
        values,
        source,
        "api_max_connections",
        "api_max_client_connections",
        "or one client's share is never reached",
    )


def _at_least(values: dict, source: dict[str, str], big: str, small: str, why: str) -> None:
    """Refuse ``big`` below ``small`` (each as given, or its default), naming where from."""
    big_value = values.get(big, getattr(NodeConfig, big))
    small_value = values.get(small, getattr(NodeConfig, small))
    if big_value < small_value:
        where = source.get(big) or source[small]
        raise ConfigError(
            f"{where}: {big} = {big_value} must be at least {small} = {small_value}, {why}"
        )


def load_config(data_dir: Path, **overrides) -> NodeConfig:
    """Defaults, then ``config.toml`` in the data dir, then non-None overrides (flags)."""
    data_dir = Path(data_dir).resolve()
    values: dict = {}
    path = data_dir / "config.toml"
    if path.exists():
        try:
            values = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        unknown = sorted(set(values) - set(RULES))
        if unknown:
            raise ConfigError(
                f"{path}: unknown setting(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(RULES))})"
            )
    source = dict.fromkeys(values, str(path))
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    source.update({k: FLAGS.get(k, "--" + k.replace("_", "-")) for k in given})
    check_settings(values, source)
    return NodeConfig(data_dir=data_dir, **values)


def write_config(path: Path, values: dict) -> None:
    """Write settings as config.toml (strings, integers, booleans and lists of strings)."""
    # JSON scalars and arrays of strings are valid TOML as they are.
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
