"""Options shared by the commands, and how they print results and failures."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click

from datacoffer import config
from datacoffer.core.identities import IdentityError
from datacoffer.installation import Installation, InstallationError

F = TypeVar("F", bound=Callable[..., Any])


def data_dir_option(func: F) -> F:
    func = click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), default=None,
        help="TOML configuration file (also DATACOFFER_CONFIG).")(func)
    return click.option(
        "--data-dir", type=click.Path(file_okay=False), default=None,
        help="Data directory (default ./datacoffer-data; also DATACOFFER_DATA_DIR).")(func)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def settings(data_dir: str | None, config_file: str | None, **flags: Any) -> config.Settings:
    try:
        return config.load(config_file, data_dir=data_dir, **flags)
    except config.ConfigError as exc:
        fail(str(exc), 2)


def open_installation(conf: config.Settings, *, create: bool) -> Installation:
    try:
        return Installation.open(conf, create=create)
    except InstallationError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot open the data directory: {exc.strerror} ({exc.filename})")


def emit(document: Any) -> None:
    """Print exactly one JSON document on standard output."""
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


@contextmanager
def installation(data_dir: str | None, config_file: str | None) -> Iterator[Installation]:
    inst = open_installation(settings(data_dir, config_file), create=False)
    try:
        yield inst
    except IdentityError as exc:
        fail(str(exc))
    finally:
        inst.close()
