"""`*` patterns of the policy language: `*` matches any run of characters, `/` included.

Matched in linear time: a pattern is split at its stars, and the pieces between them are
found left to right. (A regular expression with several `.*` backtracks: a policy with many
stars, matched against a long key a caller chose, could hold the server for minutes.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Wildcard:
    #: the literal pieces between the stars (one piece: no star)
    pieces: tuple[str, ...]

    @classmethod
    def of(cls, pattern: str) -> Wildcard:
        return cls(tuple(pattern.split("*")))

    def fullmatch(self, text: str) -> bool:
        first, *middle, last = self.pieces if len(self.pieces) > 1 else (*self.pieces, None)
        if last is None:
            return text == first
        end = len(text) - len(last)
        if end < len(first) or not text.startswith(first) or not text.endswith(last):
            return False
        # each piece at its leftmost place leaves the most room for the ones after it
        pos = len(first)
        for piece in middle:
            found = text.find(piece, pos, end)
            if found < 0:
                return False
            pos = found + len(piece)
        return True
