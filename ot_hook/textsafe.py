"""Text from a delivery shown on a terminal: control characters made visible, never obeyed."""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, the bidirectional overrides that can reorder a line on screen, and
# lone surrogates: a header byte that was not UTF-8 (\udc9b) would go out as that raw byte
# (0x9b, an 8-bit CSI) when written with surrogateescape.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` with every control character shown as an escape (\\x1b, \\n, \\u202e)."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
