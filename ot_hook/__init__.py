"""ot-hook: a local HTTPS receiver, sender and live viewer for Order Time's webhook."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ot-hook")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
