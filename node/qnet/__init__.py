"""QNet: a lean BFT blockchain node and the operations suite around it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qnet")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
