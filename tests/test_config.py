"""Settings: flag > DATACOFFER_* environment > TOML file (--config or DATACOFFER_CONFIG) >
default (service.md, "What the operator runs"), and a custom set of regions end-to-end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from datacoffer import config
from datacoffer.config import ConfigError, Settings, load
from tests.serverproc import ServerProcess


@pytest.fixture(autouse=True)
def no_datacoffer_env(monkeypatch):
    """Each test starts from an environment without any DATACOFFER_* setting."""
    for name in list(os.environ):
        if name.startswith("DATACOFFER_"):
            monkeypatch.delenv(name)


def toml(tmp_path: Path, text: str, name: str = "datacoffer.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults():
    s = load()
    assert s == Settings()
    assert s.data_dir == Path("datacoffer-data")
    assert s.host == "127.0.0.1"
    assert s.port == 8080
    assert s.max_coffers == 20
    assert s.metadata_url == ""
    assert s.regions == {"ap-tianjin": "regions/ap-tianjin", "ap-shanghai": "regions/ap-shanghai",
                         "ap-guangzhou": "regions/ap-guangzhou"}
    assert list(s.regions) == ["ap-tianjin", "ap-shanghai", "ap-guangzhou"]
    assert s.tls_cert == s.tls_key == ""
    assert s.database_url == f"sqlite:///{Path('datacoffer-data/metadata.db').resolve()}"
    assert s.region_path("ap-shanghai") == Path("datacoffer-data/regions/ap-shanghai")


def test_flags_of_none_mean_not_given():
    assert load(None, data_dir=None, host=None, port=None) == Settings()


FILE = """\
port = 9001
max_coffers = 5
host = "127.0.0.2"
data_dir = "/srv/from-file"

[regions]
file-a = "/mnt/fa"
file-b = "rel/fb"
"""


def test_file(tmp_path):
    s = load(toml(tmp_path, FILE))
    assert (s.port, s.max_coffers, s.host) == (9001, 5, "127.0.0.2")
    assert s.data_dir == Path("/srv/from-file")
    assert s.regions == {"file-a": "/mnt/fa", "file-b": "rel/fb"}
    assert list(s.regions) == ["file-a", "file-b"]  # the file's order: the first is the first
    # relative region paths are under the data directory, absolute ones are kept
    assert s.region_path("file-a") == Path("/mnt/fa")
    assert s.region_path("file-b") == Path("/srv/from-file/rel/fb")
    # what the file does not set keeps its default
    assert s.sign_skew == Settings().sign_skew
    assert s.lease_seconds == Settings().lease_seconds


def test_file_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DATACOFFER_CONFIG", str(toml(tmp_path, FILE)))
    assert load().port == 9001
    assert load(None).max_coffers == 5


def test_config_argument_beats_datacoffer_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DATACOFFER_CONFIG", str(toml(tmp_path, "port = 1111\n", "env.toml")))
    assert load(toml(tmp_path, "port = 2222\n", "flag.toml")).port == 2222
    assert load(str(tmp_path / "flag.toml")).port == 2222
    assert load().port == 1111


def test_environment_beats_file(tmp_path, monkeypatch):
    path = toml(tmp_path, FILE)
    monkeypatch.setenv("DATACOFFER_PORT", "9002")
    monkeypatch.setenv("DATACOFFER_MAX_COFFERS", "7")
    monkeypatch.setenv("DATACOFFER_REGIONS", "a=/x,b=/y")
    monkeypatch.setenv("DATACOFFER_DATA_DIR", "/srv/from-env")
    s = load(path)
    assert (s.port, s.max_coffers) == (9002, 7)
    assert s.regions == {"a": "/x", "b": "/y"}
    assert list(s.regions) == ["a", "b"]
    assert s.data_dir == Path("/srv/from-env")
    assert s.host == "127.0.0.2"  # not in the environment: the file's


def test_environment_beats_default(monkeypatch):
    monkeypatch.setenv("DATACOFFER_PORT", "9002")
    monkeypatch.setenv("DATACOFFER_MAX_COFFERS", "7")
    monkeypatch.setenv("DATACOFFER_REGIONS", "a=/x,b=/y")
    s = load()
    assert (s.port, s.max_coffers, s.regions) == (9002, 7, {"a": "/x", "b": "/y"})
    assert s.host == "127.0.0.1"


def test_flag_beats_environment_and_file(tmp_path, monkeypatch):
    path = toml(tmp_path, FILE)
    monkeypatch.setenv("DATACOFFER_PORT", "9002")
    monkeypatch.setenv("DATACOFFER_HOST", "127.0.0.3")
    monkeypatch.setenv("DATACOFFER_DATA_DIR", "/srv/from-env")
    s = load(path, port=9003, host="127.0.0.4", data_dir="/srv/from-flag")
    assert (s.port, s.host, s.data_dir) == (9003, "127.0.0.4", Path("/srv/from-flag"))
    # a flag not given leaves the environment's, then the file's
    s = load(path, port=None, host=None, data_dir=None)
    assert (s.port, s.host, s.data_dir) == (9002, "127.0.0.3", Path("/srv/from-env"))
    assert s.max_coffers == 5


def test_port_flag_given_as_text_is_a_number():
    assert load(port="8081").port == 8081


def test_unknown_keys_are_named(tmp_path):
    path = toml(tmp_path, "port = 1\nbogus = 2\n[zz_section]\nx = 1\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value) == f"unknown setting(s) in {path}: bogus, zz_section"


def test_unknown_key_in_the_file_of_datacoffer_config(tmp_path, monkeypatch):
    path = toml(tmp_path, "prot = 8080\n")
    monkeypatch.setenv("DATACOFFER_CONFIG", str(path))
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) in .*: prot$"):
        load()


@pytest.mark.parametrize(("text", "shown"), [
    ('port = "abc"\n', "'abc'"),
    ("port = 8.5\n", "8.5"),
    ("port = true\n", "True"),
    ("max_coffers = [1]\n", "[1]"),
    ('lease_seconds = ""\n', "''"),
], ids=["text", "float", "bool", "array", "empty"])
def test_bad_int_in_the_file(tmp_path, text, shown):
    name = text.split(" ", 1)[0]
    with pytest.raises(ConfigError) as err:
        load(toml(tmp_path, text))
    assert str(err.value) == f"{name}: expected a whole number, got {shown}"


@pytest.mark.parametrize(("var", "value"), [
    ("DATACOFFER_PORT", "80x"), ("DATACOFFER_MAX_COFFERS", "1.5"),
    ("DATACOFFER_SIGN_SKEW", "five"),
])
def test_bad_int_in_the_environment(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    name = var.removeprefix("DATACOFFER_").lower()
    with pytest.raises(ConfigError) as err:
        load()
    assert str(err.value) == f"{name}: expected a whole number, got {value!r}"


def test_bad_int_flag():
    with pytest.raises(ConfigError, match=r"^port: expected a whole number, got 'http'$"):
        load(port="http")


@pytest.mark.parametrize("name", ["max_coffers", "lease_seconds"])
def test_limits_below_one_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match=r"at least 1"):
        load(toml(tmp_path, f"{name} = 0\n"))


@pytest.mark.parametrize("value", ["a=/x,b", "noequals"])
def test_bad_regions_in_the_environment(monkeypatch, value):
    monkeypatch.setenv("DATACOFFER_REGIONS", value)
    with pytest.raises(ConfigError, match=r"^regions: expected name=path"):
        load()


@pytest.mark.parametrize("text", ["regions = 5\n", "[regions]\n"], ids=["number", "empty"])
def test_bad_regions_in_the_file(tmp_path, text):
    with pytest.raises(ConfigError, match=r"^regions: expected a table"):
        load(toml(tmp_path, text))


def test_unreadable_file(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=r"^cannot read configuration file .*missing\.toml"):
        load(missing)
    broken = toml(tmp_path, "port = = 1\n")
    with pytest.raises(ConfigError, match=r"^cannot read configuration file .*datacoffer\.toml"):
        load(broken)


def test_config_error_is_a_value_error():
    assert issubclass(config.ConfigError, ValueError)


# -- end-to-end: the server and the admin commands honour the file ---------------------------


def test_custom_regions_end_to_end(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    conf = toml(tmp_path, f'max_coffers = 3\n[regions]\neu-one = "one"\neu-two = "{elsewhere}"\n')
    srv = ServerProcess(tmp_path / "data", config=conf)
    srv.env = {k: v for k, v in os.environ.items() if not k.startswith("DATACOFFER_")}
    srv.start()
    try:
        c = srv.new_client()
        try:
            for regions in (["ap-tianjin"], ["eu-one", "ap-shanghai"], ["ap-guangzhou"]):
                body = json.dumps({"Locations": {"Location": regions}})
                r = c.put("/refused-1250000000", content=body)
                assert r.status_code == 400, r.text
                assert r.headers["x-cdcs-error-code"] == "InvalidArgument"
            c.make_coffer("one-1250000000", "eu-one")
            c.make_coffer("two-1250000000", "eu-two", "eu-one")
            assert c.put("/two-1250000000/k", content=b"in region two").status_code == 200
            r = c.get("/two-1250000000/k")
            assert (r.status_code, r.content) == (200, b"in region two")
            assert r.headers["x-cdcs-coffer-region"] == "eu-two"
            # max_coffers = 3 from the file
            c.make_coffer("three-1250000000", "eu-two")
            r = c.put("/four-1250000000", content=b'{"Locations": {"Location": ["eu-one"]}}')
            assert (r.status_code, r.headers["x-cdcs-error-code"]) == (
                409, "CofferCountExceedsLimit")
        finally:
            c.close()
        status = srv.admin("status")
    finally:
        srv.stop()
    # the object's bytes are in the primary region's directory, outside the data directory
    blobs = [p for p in (elsewhere / "blobs").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in blobs] == [b"in region two"]
    assert (srv.data_dir / "one").is_dir()
    assert not (srv.data_dir / "regions").exists()  # no default region was made
    assert [(r["Name"], r["Path"]) for r in status["Regions"]] == [
        ("eu-one", str((srv.data_dir / "one").resolve())), ("eu-two", str(elsewhere))]


def test_environment_settings_end_to_end(tmp_path):
    """DATACOFFER_CONFIG and DATACOFFER_REGIONS reach both `serve` and `admin`; the
    environment's regions win over the file's."""
    conf = toml(tmp_path, '[regions]\nfile-only = "f"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATACOFFER_")}
    env.update(DATACOFFER_CONFIG=str(conf), DATACOFFER_REGIONS=f"r-x={tmp_path / 'x'},r-y=y",
               DATACOFFER_MAX_COFFERS="1")
    srv = ServerProcess(tmp_path / "data")
    srv.env = env
    srv.start()
    try:
        c = srv.new_client()
        try:
            r = c.put("/aa-1250000000", content=b'{"Locations": {"Location": ["file-only"]}}')
            assert (r.status_code, r.headers["x-cdcs-error-code"]) == (400, "InvalidArgument")
            c.make_coffer("aa-1250000000", "r-y", "r-x")
            r = c.put("/bb-1250000000", content=b'{"Locations": {"Location": ["r-x"]}}')
            assert (r.status_code, r.headers["x-cdcs-error-code"]) == (
                409, "CofferCountExceedsLimit")
        finally:
            c.close()
        status = srv.admin("status")
    finally:
        srv.stop()
    assert [r["Name"] for r in status["Regions"]] == ["r-x", "r-y"]
    assert (tmp_path / "x").is_dir() and (srv.data_dir / "y").is_dir()
    assert not (srv.data_dir / "f").exists()


def test_serve_refuses_a_bad_configuration(tmp_path):
    import subprocess
    import sys

    conf = toml(tmp_path, "port = 8080\nbogus = 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATACOFFER_")}
    done = subprocess.run([sys.executable, "-m", "datacoffer", "serve", "--data-dir",
                           str(tmp_path / "d"), "--config", str(conf)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"error: unknown setting(s) in {conf}: bogus\n"
    assert not (tmp_path / "d").exists()
    env["DATACOFFER_PORT"] = "eighty"
    done = subprocess.run([sys.executable, "-m", "datacoffer", "serve", "--data-dir",
                           str(tmp_path / "d")], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr == "error: port: expected a whole number, got 'eighty'\n"
    assert not (tmp_path / "d").exists()


def test_kms_setting(tmp_path):
    assert load(data_dir=str(tmp_path)).kms == "builtin"
    with pytest.raises(ConfigError, match=r'^kms: expected "builtin" or "kmip", got \'vault\'$'):
        load(data_dir=str(tmp_path), kms="vault")
    with pytest.raises(ConfigError,
                       match=r'^kms = "kmip" needs kmip_host, kmip_cert, kmip_key, kmip_ca$'):
        load(data_dir=str(tmp_path), kms="kmip")
    conf = tmp_path / "c.toml"
    conf.write_text('kms = "kmip"\nkmip_host = "kms.example"\nkmip_cert = "c.pem"\n'
                    'kmip_key = "k.pem"\nkmip_ca = "ca.pem"\nkmip_timeout = 3\n')
    settings = load(conf, data_dir=str(tmp_path))
    assert (settings.kms, settings.kmip_host, settings.kmip_port, settings.kmip_timeout) == (
        "kmip", "kms.example", 5696, 3)
    with pytest.raises(ConfigError, match=r"^kmip_timeout must be at least 1$"):
        load(conf, data_dir=str(tmp_path), kmip_timeout=0)


def test_lifecycle_interval_setting(tmp_path, monkeypatch):
    assert load(data_dir=str(tmp_path)).lifecycle_interval == 600
    monkeypatch.setenv("DATACOFFER_LIFECYCLE_INTERVAL", "5")
    assert load(data_dir=str(tmp_path)).lifecycle_interval == 5
    with pytest.raises(ConfigError, match=r"lifecycle_interval must be at least 1$"):
        load(data_dir=str(tmp_path), lifecycle_interval=0)
