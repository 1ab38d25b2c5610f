"""ot-hook: a local HTTPS receiver, sender and live viewer for Order Time's webhook."""

# The one place the version is written; pyproject.toml reads it from here. A constant, not
# importlib.metadata, because every start (and every TAB of completion) pays for that lookup.
__version__ = "0.1.0"
