"""What a validator keeps on disk for consensus, apart from the chain: the rules of its
durability live here.

- ``SigningStateFile``: the core's signing state (what it last signed, its lock and valid
  value), durable before any message it covers leaves the process, so a validator that
  crashes and restarts never signs two different votes for one height and round.
- ``ConsensusLog`` (consensus.wal): the consensus messages of the height in progress, so a
  restarted validator can replay them. Losing its tail costs only liveness.

The driver (``bft.py``) decides what goes in; these classes only make it durable and read
it back.
"""

import os
import struct
from pathlib import Path

from . import crypto, tendermint

_LEN = struct.Struct(">I")


class ConsensusLog:
    """Consensus messages of the height in progress, so a restarted validator can replay
    them (the core needs the polka behind its lock to make progress after a crash).
    Losing the tail in a crash costs only liveness, so appends are not fsynced."""

    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("ab")

    def read(self) -> list[bytes]:
        self._file.flush()
        data = self.path.read_bytes()
        out, pos = [], 0
        while pos + _LEN.size <= len(data):
            (n,) = _LEN.unpack_from(data, pos)
            if pos + _LEN.size + n > len(data):
                break  # a torn last write after a crash: ignore it
            out.append(data[pos + _LEN.size : pos + _LEN.size + n])
            pos += _LEN.size + n
        return out

    def append(self, message: bytes) -> None:
        self._file.write(_LEN.pack(len(message)) + message)

    def reset(self) -> None:
        self._file.truncate(0)

    def close(self) -> None:
        self._file.close()


class SigningStateFile:
    """The core's signing state, durable before any message it covers leaves the process.

    Two fixed slots written alternately, each with a sequence number and a checksum, so a
    save is one write and one fdatasync, and a write torn by a crash leaves the other slot.
    """

    SLOT = 128
    _HEAD = struct.Struct(">QH")

    def __init__(self, path: Path):
        new = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if new:
            os.ftruncate(self._fd, 2 * self.SLOT)
            os.fsync(self._fd)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._seq, self.loaded = self._read()

    def _read(self) -> tuple[int, tendermint.SigningState | None]:
        best: tuple[int, tendermint.SigningState | None] = (0, None)
        for slot in range(2):
            raw = os.pread(self._fd, self.SLOT, slot * self.SLOT)
            if len(raw) < self.SLOT or crypto.digest(raw[:-32]) != raw[-32:]:
                continue
            seq, n = self._HEAD.unpack_from(raw)
            if seq > best[0]:
                body = raw[self._HEAD.size : self._HEAD.size + n]
                best = (seq, tendermint.SigningState.decode(body))
        return best

    def save(self, state: tendermint.SigningState) -> None:
        self._seq += 1
        body = state.encode()
        raw = (self._HEAD.pack(self._seq, len(body)) + body).ljust(self.SLOT - 32, b"\0")
        os.pwrite(self._fd, raw + crypto.digest(raw), (self._seq % 2) * self.SLOT)
        os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)
