"""The `*` matcher of the policy language against a regular expression (a reference that is
right but backtracks), on drawn patterns and texts."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from datacoffer.core.wildcards import Wildcard

_ALPHABET = "ab/*"


def reference(pattern: str, text: str) -> bool:
    regex = ".*".join(map(re.escape, pattern.split("*")))
    return re.fullmatch(regex, text, re.DOTALL) is not None


@settings(max_examples=2000, deadline=None)
@given(st.text(_ALPHABET, max_size=10), st.text("ab/", max_size=12))
def test_matches_as_the_regular_expression(pattern: str, text: str) -> None:
    assert Wildcard.of(pattern).fullmatch(text) == reference(pattern, text)


def test_edges() -> None:
    cases = [("", "", True), ("", "a", False), ("*", "", True), ("**", "x/y", True),
             ("a*a", "a", False), ("a*a", "aa", True), ("a*b*a", "aba", True),
             ("a*b*a", "ab", False), ("c/*", "c/", True), ("c/*", "c", False),
             ("*.csv", "x.csv.gz", False), ("x*", "x\ny", True)]
    for pattern, text, expected in cases:
        assert Wildcard.of(pattern).fullmatch(text) is expected, (pattern, text)
