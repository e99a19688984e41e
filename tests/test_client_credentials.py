"""Where the SDK finds its endpoint and keys: arguments > DATACOFFER_* environment > profile
file; the key pair never mixes sources; the profile file is written safely."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from datacoffer.client import Client, Profile, errors
from datacoffer.client import credentials as cred
from datacoffer.client.credentials import CredentialsError, read_profiles, resolve, write_profile

NO_CREDENTIALS = ("no credentials: pass secret_id and secret_key, set DATACOFFER_SECRET_ID and "
                  "DATACOFFER_SECRET_KEY, or run `datacoffer configure`")
ALL_VARS = [*cred.ENV.values(), "DATACOFFER_PROFILE", "DATACOFFER_PROFILE_FILE"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No DATACOFFER_* variable, and a home of the test's own (no real profile file)."""
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def profiles(monkeypatch, tmp_path) -> Path:
    """DATACOFFER_PROFILE_FILE pointing at a file with two profiles."""
    path = tmp_path / "profiles.toml"
    path.write_text(
        '[default]\nendpoint = "http://profile.example:1"\nsecret_id = "AKIDprofile"\n'
        'secret_key = "profile-key"\ntoken = "profile-token"\nregion = "ap-guangzhou"\n\n'
        '[other]\nendpoint = "https://other.example"\nsecret_id = "AKIDother"\n'
        'secret_key = "other-key"\n')
    monkeypatch.setenv("DATACOFFER_PROFILE_FILE", str(path))
    return path


def set_env(monkeypatch, **values: str) -> None:
    for field, value in values.items():
        monkeypatch.setenv(cred.ENV[field], value)


# -- where the profile file is ------------------------------------------------------------------

def test_profile_file_location(monkeypatch, tmp_path):
    assert cred.profile_file() == tmp_path / "home" / ".config" / "datacoffer" / "profiles.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cred.profile_file() == tmp_path / "xdg" / "datacoffer" / "profiles.toml"
    monkeypatch.setenv("DATACOFFER_PROFILE_FILE", str(tmp_path / "mine.toml"))
    assert cred.profile_file() == tmp_path / "mine.toml"


# -- precedence ---------------------------------------------------------------------------------

def test_nothing_anywhere():
    with pytest.raises(CredentialsError) as caught:
        resolve()
    assert str(caught.value) == NO_CREDENTIALS
    assert isinstance(caught.value, errors.DataCofferError)
    assert not isinstance(caught.value, errors.ServiceError)
    with pytest.raises(CredentialsError, match=r"^no credentials: "):
        Client()


def test_profile_alone(profiles):
    assert resolve() == Profile("http://profile.example:1", "AKIDprofile", "profile-key",
                                "profile-token", "ap-guangzhou")


def test_environment_over_profile(monkeypatch, profiles):
    set_env(monkeypatch, endpoint="http://env.example:2/", secret_id="AKIDenv",
            secret_key="env-key", token="env-token", region="ap-shanghai")
    assert resolve() == Profile("http://env.example:2", "AKIDenv", "env-key", "env-token",
                                "ap-shanghai")


def test_arguments_over_environment(monkeypatch, profiles):
    set_env(monkeypatch, endpoint="http://env.example:2", secret_id="AKIDenv",
            secret_key="env-key", token="env-token", region="ap-shanghai")
    assert resolve("http://arg.example:3", "AKIDarg", "arg-key", "arg-token", "ap-tianjin") \
        == Profile("http://arg.example:3", "AKIDarg", "arg-key", "arg-token", "ap-tianjin")


def test_each_setting_falls_through_on_its_own(monkeypatch, profiles):
    # keys from the arguments; endpoint from the environment; region from the profile
    set_env(monkeypatch, endpoint="http://env.example:2")
    assert resolve(secret_id="AKIDarg", secret_key="arg-key") == Profile(
        "http://env.example:2", "AKIDarg", "arg-key", None, "ap-guangzhou")
    # endpoint argument, keys from the profile
    assert resolve("http://arg.example:3") == Profile(
        "http://arg.example:3", "AKIDprofile", "profile-key", "profile-token", "ap-guangzhou")


def test_defaults_without_a_profile(monkeypatch):
    set_env(monkeypatch, secret_id="AKIDenv", secret_key="env-key")
    assert resolve() == Profile("http://127.0.0.1:8080", "AKIDenv", "env-key", None, None)
    assert resolve(region="") == Profile("http://127.0.0.1:8080", "AKIDenv", "env-key")


def test_the_key_pair_and_its_token_never_mix(monkeypatch, profiles):
    # a whole pair in the environment: the profile's token is not borrowed
    set_env(monkeypatch, secret_id="AKIDenv", secret_key="env-key")
    p = resolve()
    assert (p.secret_id, p.secret_key, p.token) == ("AKIDenv", "env-key", None)
    # a whole pair as arguments: the environment's token is not borrowed
    set_env(monkeypatch, token="env-token")
    p = resolve(secret_id="AKIDarg", secret_key="arg-key")
    assert (p.secret_id, p.secret_key, p.token) == ("AKIDarg", "arg-key", None)


@pytest.mark.parametrize(("args", "env", "where", "have", "lack"), [
    ({"secret_id": "AKIDarg"}, {}, "the arguments", "secret_id", "secret_key"),
    ({"secret_key": "arg-key"}, {}, "the arguments", "secret_key", "secret_id"),
    ({"secret_key": "arg-key"}, {"secret_id": "AKIDenv", "secret_key": "env-key"},
     "the arguments", "secret_key", "secret_id"),
    ({}, {"secret_id": "AKIDenv"}, "the environment", "secret_id", "secret_key"),
    ({}, {"secret_key": "env-key"}, "the environment", "secret_key", "secret_id"),
])
def test_half_a_pair_is_an_error_not_completed_elsewhere(monkeypatch, profiles, args, env,
                                                         where, have, lack):
    set_env(monkeypatch, **env)
    with pytest.raises(CredentialsError) as caught:
        resolve(**args)
    assert str(caught.value) == (f"incomplete credentials in {where}: {have} is set but {lack} "
                                 "is not; give both halves of the key pair in one place")


def test_half_a_pair_in_the_profile(monkeypatch, tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[default]\nsecret_id = "AKIDonly"\n')
    monkeypatch.setenv("DATACOFFER_PROFILE_FILE", str(path))
    with pytest.raises(CredentialsError) as caught:
        resolve()
    assert str(caught.value) == (
        f"incomplete credentials in profile 'default' of {path}: secret_id is set but "
        "secret_key is not; give both halves of the key pair in one place")
    # a whole pair elsewhere still wins over the profile's half
    set_env(monkeypatch, secret_id="AKIDenv", secret_key="env-key")
    assert resolve().secret_id == "AKIDenv"


def test_choosing_a_profile(monkeypatch, profiles):
    assert resolve(profile="other") == Profile("https://other.example", "AKIDother",
                                               "other-key", None, None)
    monkeypatch.setenv("DATACOFFER_PROFILE", "other")
    assert resolve().secret_id == "AKIDother"
    # the argument wins over the variable
    assert resolve(profile="default").secret_id == "AKIDprofile"
    with pytest.raises(CredentialsError) as caught:
        resolve(profile="nope")
    assert str(caught.value) == f"no profile 'nope' in {profiles}"


def test_unreadable_profile_file(monkeypatch, tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[default\nsecret_id = ")
    monkeypatch.setenv("DATACOFFER_PROFILE_FILE", str(path))
    with pytest.raises(CredentialsError) as caught:
        resolve()
    assert re.fullmatch(rf"cannot read the profile file {re.escape(str(path))}: .+",
                        str(caught.value))
    # absent is not an error: just no profile
    monkeypatch.setenv("DATACOFFER_PROFILE_FILE", str(tmp_path / "absent.toml"))
    assert read_profiles() == {}


def test_a_named_profile_comes_before_environment_keys(monkeypatch, profiles):
    path = profiles
    path.write_text(path.read_text() + '\n[prod]\nendpoint = "https://prod.example:8443"\n'
                    'secret_id = "AKIDprod"\nsecret_key = "prod-key"\n')
    set_env(monkeypatch, secret_id="AKIDenv", secret_key="env-key")
    # named explicitly: the profile's keys (and endpoint), not the environment's keys
    assert resolve(profile="prod") == Profile("https://prod.example:8443", "AKIDprod",
                                              "prod-key", None, None)
    with Client(profile="prod") as c:
        assert (c.endpoint, c.profile.secret_id) == ("https://prod.example:8443", "AKIDprod")
    # not named: the environment's keys win over the default profile (whose token is not
    # borrowed)
    assert resolve() == Profile("http://profile.example:1", "AKIDenv", "env-key", None,
                                "ap-guangzhou")
    # arguments still come before a named profile
    assert resolve(secret_id="AKIDarg", secret_key="arg-key", profile="prod") == Profile(
        "https://prod.example:8443", "AKIDarg", "arg-key", None, None)
    # a named profile without keys leaves them to the environment
    path.write_text(path.read_text() + '\n[keyless]\nendpoint = "https://keyless.example"\n')
    assert resolve(profile="keyless") == Profile("https://keyless.example", "AKIDenv",
                                                 "env-key", None, None)


def test_a_broken_profile_file_is_read_only_when_needed(monkeypatch, tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("this is = = not TOML [[\n")
    monkeypatch.setenv("DATACOFFER_PROFILE_FILE", str(path))
    reported = rf"cannot read the profile file {re.escape(str(path))}: .+"
    # endpoint and both keys given: nothing to find in the file, so it is not read
    assert resolve("http://arg.example:3", "AKIDarg", "arg-key") == Profile(
        "http://arg.example:3", "AKIDarg", "arg-key")
    assert resolve("http://arg.example:3", "AKIDarg", "arg-key", "tok", "ap-tianjin",
                   profile="prod") == Profile("http://arg.example:3", "AKIDarg", "arg-key",
                                              "tok", "ap-tianjin")
    with Client("http://arg.example:3", "AKIDarg", "arg-key") as c:
        assert c.profile.secret_id == "AKIDarg"
    # something left to find: the file is read, and its fault reported with its name
    for args in ({"secret_id": "AKIDarg", "secret_key": "arg-key"},  # the endpoint
                 {"endpoint": "http://arg.example:3"},  # the keys
                 {}):
        with pytest.raises(CredentialsError) as caught:
            resolve(**args)
        assert re.fullmatch(reported, str(caught.value)), (args, str(caught.value))
    with pytest.raises(CredentialsError) as caught:
        Client(secret_id="AKIDarg", secret_key="arg-key")
    assert re.fullmatch(reported, str(caught.value))


# -- writing profiles ---------------------------------------------------------------------------

def test_write_profile_creates_the_file_private(monkeypatch, tmp_path):
    path = tmp_path / "conf" / "deep" / "profiles.toml"
    monkeypatch.setenv("DATACOFFER_PROFILE_FILE", str(path))
    assert write_profile("default", {"endpoint": "http://h:1", "secret_id": "AKIDa",
                                     "secret_key": "ka"}) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_profiles() == {"default": {"endpoint": "http://h:1", "secret_id": "AKIDa",
                                           "secret_key": "ka"}}
    assert resolve() == Profile("http://h:1", "AKIDa", "ka")
    # no temporary file is left beside it
    assert sorted(p.name for p in path.parent.iterdir()) == ["profiles.toml"]


def test_write_profile_keeps_the_others_and_round_trips_odd_values(tmp_path):
    path = tmp_path / "profiles.toml"
    write_profile("default", {"secret_id": "AKIDa", "secret_key": "ka"}, path)
    odd = {
        "endpoint": "https://ü.example:8443",
        "secret_id": 'AKID"quoted"',
        "secret_key": 'back\\slash "and" quote\'s \\n not a newline',
        "token": "名前 ünïcødé 😀 tab\there new\nline del\x7f",
        "region": "ap-tianjin",
    }
    write_profile("odd one", odd, path)
    write_profile("third", {"secret_id": "AKIDc", "secret_key": "kc", "region": "",
                            "unknown": "dropped"}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_profiles(path) == {
        "default": {"secret_id": "AKIDa", "secret_key": "ka"},
        "odd one": odd,
        "third": {"secret_id": "AKIDc", "secret_key": "kc"},
    }
    # replacing a profile replaces it whole, and keeps the others
    write_profile("default", {"secret_id": "AKIDnew", "secret_key": "knew"}, path)
    assert read_profiles(path) == {
        "default": {"secret_id": "AKIDnew", "secret_key": "knew"},
        "odd one": odd,
        "third": {"secret_id": "AKIDc", "secret_key": "kc"},
    }


def test_resolve_reads_a_written_odd_profile(monkeypatch, tmp_path):
    path = tmp_path / "profiles.toml"
    monkeypatch.setenv("DATACOFFER_PROFILE_FILE", str(path))
    odd = {"endpoint": "http://127.0.0.1:9/", "secret_id": "AKID\\x",
           "secret_key": 'k"e\\y😀', "token": "t\n", "region": "ap-shanghai"}
    write_profile("odd one", odd)
    assert resolve(profile="odd one") == Profile("http://127.0.0.1:9", "AKID\\x", 'k"e\\y😀',
                                                 "t\n", "ap-shanghai")


def test_repr_shows_no_secret():
    p = Profile("http://h:1", "AKIDvisible", "the-secret-key", "the-token", "ap-tianjin")
    for text in (repr(p), str(p), f"{p}", repr([p])):
        assert "the-secret-key" not in text
        assert "the-token" not in text
    assert repr(p) == ("Profile(endpoint='http://h:1', secret_id='AKIDvisible', "
                       "region='ap-tianjin', token=set)")
    assert repr(Profile("http://h:1", "AKID", "k")) == (
        "Profile(endpoint='http://h:1', secret_id='AKID', region=None, token=None)")
    with Client("http://h:1", "AKIDvisible", "the-secret-key") as c:
        assert repr(c) == "Client('http://h:1', secret_id='AKIDvisible')"
        assert "the-secret-key" not in repr(c.profile)


# -- the Client: its Host and endpoint ----------------------------------------------------------

def test_client_host_and_endpoint():
    with Client("http://127.0.0.1:8080/", "AKID", "k") as c:
        assert (c.endpoint, c.host) == ("http://127.0.0.1:8080", "127.0.0.1:8080")
    with Client("http://127.0.0.1:8080", "AKID", "k", region="ap-shanghai") as c:
        assert c.host == "cdcs.ap-shanghai.127.0.0.1:8080"
    with Client("https://store.example", "AKID", "k", region="ap-tianjin") as c:
        assert (c.endpoint, c.host) == ("https://store.example",
                                        "cdcs.ap-tianjin.store.example")
    for bad in ("ftp://h:1", "127.0.0.1:8080", "http://"):
        with pytest.raises(CredentialsError, match="the endpoint must be an http:// or https://"):
            Client(bad, "AKID", "k")


def test_client_from_the_environment_with_a_region(monkeypatch, server, account, coffer):
    set_env(monkeypatch, endpoint=server.base_url, secret_id=account.secret_id,
            secret_key=account.secret_key, region="ap-shanghai")
    with Client() as c:
        assert c.host == f"cdcs.ap-shanghai.127.0.0.1:{server.port}"
        assert c.profile.region == "ap-shanghai"
        sent = []
        c._http.event_hooks = {"request": [sent.append], "response": []}
        names = [x.name for x in c.list_coffers().coffers]
        assert coffer in names
        assert sent[0].headers["host"] == f"cdcs.ap-shanghai.127.0.0.1:{server.port}"


def test_client_with_a_region_reads_through_the_real_server(server, account, sdk, coffer_name):
    sdk.create_coffer(coffer_name, ["ap-tianjin", "ap-shanghai"])
    sdk.put_object(coffer_name, "k", b"regional read")
    with Client(server.base_url, account.secret_id, account.secret_key,
                region="ap-shanghai") as c:
        assert c.host == f"cdcs.ap-shanghai.127.0.0.1:{server.port}"
        assert coffer_name in [x.name for x in c.list_coffers().coffers]
        sent = []
        c._http.event_hooks = {"request": [], "response": [sent.append]}
        assert c.get_coffer(coffer_name).locations == ["ap-tianjin", "ap-shanghai"]
        assert sent[-1].headers["x-cdcs-coffer-region"] == "ap-shanghai"
    with Client(server.base_url, account.secret_id, account.secret_key,
                region="ap-tianjin") as c:
        sent = []
        c._http.event_hooks = {"request": [], "response": [sent.append]}
        c.get_coffer(coffer_name)
        assert sent[-1].headers["x-cdcs-coffer-region"] == "ap-tianjin"


def test_a_token_with_a_permanent_key_is_sent_and_refused(server, account):
    with Client(server.base_url, account.secret_id, account.secret_key, token="tmp-token") as c:
        sent = []
        c._http.event_hooks = {"request": [sent.append], "response": []}
        with pytest.raises(errors.AuthFailed) as caught:
            c.list_coffers()
        assert sent[0].headers["x-cdcs-security-token"] == "tmp-token"
        assert caught.value.message == ("The temporary credentials are unknown, expired or "
                                        "revoked, or the token is not theirs.")
        assert "x-cdcs-security-token=tmp-token" in c.presign("GET", "c-1250000000", "k")
