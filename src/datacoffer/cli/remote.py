"""`dc://coffer/key` addresses on the command line, and the sizes options take."""

from __future__ import annotations

import re
from dataclasses import dataclass

import click

SCHEME = "dc://"
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Remote:
    """A coffer, and a key or prefix in it ("" for the coffer itself)."""

    coffer: str
    key: str = ""

    def __str__(self) -> str:
        return f"{SCHEME}{self.coffer}/{self.key}"

    def only_coffer(self, command: str) -> str:
        """The coffer's name, for a command that takes a coffer and no key (usage error
        otherwise)."""
        if self.key:
            raise click.UsageError(f"{command} takes a coffer (dc://COFFER), not an object key")
        return self.coffer

    @property
    def is_dir(self) -> bool:
        """No key, or a key ending in '/': a place to put files rather than an object."""
        return not self.key or self.key.endswith("/")


def is_remote(text: str) -> bool:
    return text.startswith(SCHEME)


def parse(text: str, *, need_key: bool = False) -> Remote:
    if not is_remote(text):
        raise click.BadParameter(f"{text!r} is not a {SCHEME}coffer/key address")
    coffer, _, key = text[len(SCHEME):].partition("/")
    if not coffer:
        raise click.BadParameter(f"{text!r} names no coffer")
    if need_key and not key:
        raise click.BadParameter(f"{text!r} names no object key")
    return Remote(coffer, key)


class RemoteType(click.ParamType):
    """A click parameter type for `dc://coffer[/key]`."""

    name = "dc://COFFER[/KEY]"

    def __init__(self, *, need_key: bool = False) -> None:
        self.need_key = need_key

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> Remote:
        if isinstance(value, Remote):
            return value
        try:
            return parse(str(value), need_key=self.need_key)
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


class SizeType(click.ParamType):
    """Bytes, or with a binary suffix: 512K, 64M, 1G (KiB, MiB, GiB)."""

    name = "SIZE"

    def __init__(self, minimum: int = 0) -> None:
        self.minimum = minimum

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a size such as 1048576, 512K, 64M or 1G", param, ctx)
        size = int(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower())
        if size < self.minimum:
            self.fail(f"{value!r} is below the minimum of {self.minimum} bytes", param, ctx)
        return size
