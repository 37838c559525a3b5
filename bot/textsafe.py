"""Neutralising control and bidi-override characters in what the bot repeats.

A display name or prompt may carry RLO (U+202E, reverses the rest of a line), ESC (terminal colours),
BEL, NUL or zero-width marks. The bot quotes names in @-mentions and prompts in acks and captions, so
these characters are removed at the channel boundary: from every incoming message's text and sender
name, and from every outgoing text and caption. Line breaks and tabs stay (prompts and replies use them);
the zero-width joiner stays (it builds emoji sequences).
"""

from __future__ import annotations

import re

# C0 controls except \t \n, DEL, C1 controls, LRM/RLM, bidi embeddings/overrides/isolates, LS/PS, BOM,
# zero-width space / non-joiner.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def clean(text: str) -> str:
    """`text` without control or bidi-override characters (\\r\\n becomes \\n)."""
    return _UNSAFE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def clean_name(name: str) -> str:
    """A display name on one line, without control characters (an @-mention must not break lines)."""
    return " ".join(clean(name).split())
