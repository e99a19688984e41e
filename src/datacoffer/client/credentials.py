"""Where the client finds its endpoint and keys: arguments, then `DATACOFFER_*` environment
variables, then a profile file.

The profile file is TOML, one table per profile, written by `datacoffer configure` with mode
0600 (it holds a SecretKey):

    [default]
    endpoint = "http://127.0.0.1:8080"
    secret_id = "AKID…"
    secret_key = "…"
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from datacoffer.client.errors import DataCofferError

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
DEFAULT_PROFILE = "default"
#: the environment variable of each setting
ENV = {
    "endpoint": "DATACOFFER_ENDPOINT",
    "secret_id": "DATACOFFER_SECRET_ID",
    "secret_key": "DATACOFFER_SECRET_KEY",
    "token": "DATACOFFER_SECURITY_TOKEN",
    "region": "DATACOFFER_REGION",
}
FIELDS = tuple(ENV)


class CredentialsError(DataCofferError):
    """No usable credentials, or an unreadable profile file."""


@dataclass(frozen=True)
class Profile:
    endpoint: str
    secret_id: str
    secret_key: str
    token: str | None = None
    region: str | None = None

    def __repr__(self) -> str:
        # never show the secret key (or the token) in a traceback or a log line
        return (f"Profile(endpoint={self.endpoint!r}, secret_id={self.secret_id!r}, "
                f"region={self.region!r}, token={'set' if self.token else None})")


def profile_file() -> Path:
    """`DATACOFFER_PROFILE_FILE`, else `$XDG_CONFIG_HOME/datacoffer/profiles.toml`
    (`~/.config/datacoffer/profiles.toml`)."""
    explicit = os.environ.get("DATACOFFER_PROFILE_FILE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "datacoffer" / "profiles.toml"


def read_profiles(path: Path | None = None) -> dict[str, dict[str, str]]:
    path = path or profile_file()
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CredentialsError(f"cannot read the profile file {path}: {exc}") from None
    return {name: {k: str(v) for k, v in table.items() if k in FIELDS}
            for name, table in doc.items() if isinstance(table, dict)}


def _toml_string(value: str) -> str:
    """A TOML basic string. JSON's escapes are TOML's, except the `\\uD83D\\uDE00` surrogate
    pairs that `ensure_ascii` makes of characters beyond U+FFFF, which TOML refuses: non-ASCII
    characters are written as they are (the file is UTF-8), and DEL, a control character to
    TOML but not to JSON, is escaped."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def write_profile(name: str, values: dict[str, str], path: Path | None = None) -> Path:
    """Set one profile (other profiles are kept), atomically and readable by the owner only."""
    path = path or profile_file()
    profiles = read_profiles(path)
    profiles[name] = {k: v for k, v in values.items() if k in FIELDS and v}
    lines = []
    for pname, table in profiles.items():
        lines.append(f"[{_toml_string(pname)}]")
        lines += [f"{key} = {_toml_string(value)}" for key, value in table.items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".profiles-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:  # mkstemp makes it 0600
            fh.write("\n".join(lines))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def resolve(endpoint: str | None = None, secret_id: str | None = None,
            secret_key: str | None = None, token: str | None = None,
            region: str | None = None, *, profile: str | None = None) -> Profile:
    """The settings to use. The key pair (with its token) comes whole from one place: the
    arguments, else the environment, else the profile, so that two halves never mix; a
    profile named explicitly (`profile`, `--profile`) comes before the environment, for the
    endpoint and region as well. The profile file is read only when the arguments leave
    something to find (the endpoint or the key pair)."""
    name = profile or os.environ.get("DATACOFFER_PROFILE") or DEFAULT_PROFILE
    env = {key: os.environ.get(var) for key, var in ENV.items()}
    given = {"secret_id": secret_id, "secret_key": secret_key, "token": token}
    stored: dict[str, str] = {}
    if not (secret_id and secret_key and endpoint):
        profiles = read_profiles()
        if name != DEFAULT_PROFILE and name not in profiles:
            raise CredentialsError(f"no profile {name!r} in {profile_file()}")
        stored = profiles.get(name, {})
    arguments = ("the arguments", given)
    environment = ("the environment", {k: env[k] for k in ("secret_id", "secret_key", "token")})
    named = (f"profile {name!r} of {profile_file()}", stored)
    sources = (arguments, named, environment) if profile else (arguments, environment, named)
    # the first place that sets either half of the pair is the one: a half is never
    # completed from elsewhere, nor silently passed over for another place's pair
    found = next(((where, s) for where, s in sources
                  if s.get("secret_id") or s.get("secret_key")), None)
    if found is None:
        raise CredentialsError(
            "no credentials: pass secret_id and secret_key, set DATACOFFER_SECRET_ID and "
            "DATACOFFER_SECRET_KEY, or run `datacoffer configure`")
    where, keys = found
    if not (keys.get("secret_id") and keys.get("secret_key")):
        have, lack = (("secret_id", "secret_key") if keys.get("secret_id")
                      else ("secret_key", "secret_id"))
        raise CredentialsError(
            f"incomplete credentials in {where}: {have} is set but {lack} is not; give "
            "both halves of the key pair in one place")
    # a profile named explicitly is what its user wants: its endpoint and region too
    first, second = (stored, env) if profile else (env, stored)
    return Profile(
        endpoint=(endpoint or first.get("endpoint") or second.get("endpoint")
                  or DEFAULT_ENDPOINT).rstrip("/"),
        secret_id=str(keys["secret_id"]), secret_key=str(keys["secret_key"]),
        token=keys.get("token") or None,
        region=region or first.get("region") or second.get("region") or None,
    )
