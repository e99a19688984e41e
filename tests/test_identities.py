"""Accounts, sub-accounts, API keys, the whitelist, secrets at rest and the coffer limit, all
through the operator's real commands and a real server."""

from __future__ import annotations

import base64
import json
import secrets
import stat
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import new_account
from tests.serverproc import ServerProcess, SignedClient

LOCATIONS = json.dumps({"Locations": {"Location": ["ap-tianjin"]}})


def assert_error(r, status, code, resource):
    """The error document and headers of a refusal (no body for HEAD)."""
    assert r.status_code == status, r.text
    assert r.headers["x-cdcs-error-code"] == code
    if r.request.method == "HEAD":
        assert r.content == b""
        return
    doc = ET.fromstring(r.content)
    assert doc.findtext("Code") == code
    assert doc.findtext("Resource") == resource
    assert doc.findtext("RequestId") == r.headers["x-cdcs-request-id"]
    assert doc.findtext("TraceId") == r.headers["x-cdcs-trace-id"]


def unique_uin():
    """A UIN no other test of the shared server uses."""
    return str(900000000000 + secrets.randbelow(99999999999))


def client_for(server, doc):
    return SignedClient(server.base_url, doc["SecretId"], doc["SecretKey"])


def coffer_names(r):
    assert r.status_code == 200, r.text
    return [c.findtext("Name") for c in ET.fromstring(r.content).find("Coffers")]


# -- the whitelist -----------------------------------------------------------------------------


def test_whitelist(server):
    acct = new_account(server, "--not-whitelisted")
    c = SignedClient(server.base_url, acct.secret_id, acct.secret_key)
    wrong = SignedClient(server.base_url, acct.secret_id, "x" * 32)
    sub = server.admin("subaccount", "create", "--parent-uin", acct.uin, "--uin", unique_uin())
    sc = client_for(server, sub)
    coffer = f"wl{secrets.token_hex(4)}-{acct.app_id}"
    try:
        assert {"AppId": acct.app_id, "Uin": acct.uin} not in server.admin("whitelist", "list")
        assert_error(c.get("/"), 401, "ServiceNotOpen", "")
        assert_error(c.put(f"/{coffer}", content=LOCATIONS), 401, "ServiceNotOpen", coffer)
        assert_error(c.head(f"/{coffer}/k"), 401, "ServiceNotOpen", f"{coffer}/k")
        # authentication comes first: a bad signature is AuthFailed, not ServiceNotOpen
        assert_error(wrong.get("/"), 401, "AuthFailed", "")
        # the sub-account counts against its parent
        assert_error(sc.get("/"), 401, "ServiceNotOpen", "")

        assert server.admin("whitelist", "add", "--app-id", acct.app_id) == {
            "AppId": acct.app_id, "Whitelisted": True}
        listed = server.admin("whitelist", "list")
        assert {"AppId": acct.app_id, "Uin": acct.uin} in listed
        assert all(set(entry) == {"AppId", "Uin"} for entry in listed)
        assert [e["AppId"] for e in listed] == sorted(e["AppId"] for e in listed)
        assert coffer_names(c.get("/")) == []
        c.make_coffer(coffer)
        assert coffer_names(c.get("/")) == [coffer]
        assert coffer_names(sc.get("/")) == []  # open now, but no policy grants it anything
        assert_error(wrong.get("/"), 401, "AuthFailed", "")

        assert server.admin("whitelist", "remove", "--app-id", acct.app_id) == {
            "AppId": acct.app_id, "Whitelisted": False}
        assert {"AppId": acct.app_id, "Uin": acct.uin} not in server.admin("whitelist", "list")
        assert_error(c.get("/"), 401, "ServiceNotOpen", "")
        assert_error(c.get(f"/{coffer}"), 401, "ServiceNotOpen", coffer)
        assert_error(c.delete(f"/{coffer}"), 401, "ServiceNotOpen", coffer)
        assert_error(sc.get("/"), 401, "ServiceNotOpen", "")
        # unknown AppID: the command fails and says so
        done = server.admin("whitelist", "add", "--app-id", "999", check=False)
        assert done.returncode != 0
        assert "999" in done.stderr
        assert done.stdout == ""
    finally:
        for x in (c, wrong, sc):
            x.close()


# -- sub-accounts and other accounts -----------------------------------------------------------


@pytest.fixture(scope="module")
def owned(client, account):
    """The shared account's coffer holding one object: (coffer, key, bytes)."""
    name = f"own{secrets.token_hex(4)}-{account.app_id}"
    client.make_coffer(name)
    r = client.put(f"/{name}/doc.txt", content=b"owner's bytes")
    assert r.status_code == 200, r.text
    return name, "doc.txt", b"owner's bytes"


def refused_everywhere(c, coffer, key, empty, code="PolicyCheckFailed"):
    """Every foundation operation on `coffer` is refused with `code`."""
    assert_error(c.get(f"/{coffer}/{key}"), 401, code, f"{coffer}/{key}")
    assert_error(c.head(f"/{coffer}/{key}"), 401, code, f"{coffer}/{key}")
    assert_error(c.put(f"/{coffer}/new.txt", content=b"intruder"), 401, code,
                 f"{coffer}/new.txt")
    assert_error(c.get(f"/{coffer}"), 401, code, coffer)
    assert_error(c.get(f"/{coffer}", params={"prefix": "d", "max-keys": "1"}), 401, code,
                 coffer)
    assert_error(c.delete(f"/{coffer}"), 401, code, coffer)
    assert_error(c.delete(f"/{empty}"), 401, code, empty)


def test_subaccount_has_no_rights_of_its_own(server, client, account, owned, coffer):
    coffer_with_object, key, data = owned
    sub_uin = unique_uin()
    sub = server.admin("subaccount", "create", "--parent-uin", account.uin, "--uin", sub_uin)
    assert set(sub) == {"Uin", "SecretId", "SecretKey"}
    assert sub["Uin"] == sub_uin
    sc = client_for(server, sub)
    try:
        refused_everywhere(sc, coffer_with_object, key, coffer)
        name = f"sub{secrets.token_hex(4)}-{account.app_id}"
        assert_error(sc.put(f"/{name}", content=LOCATIONS), 401, "PolicyCheckFailed", name)
        # GetService answers, with nothing in it
        r = sc.get("/")
        assert r.status_code == 200, r.text
        doc = ET.fromstring(r.content)
        assert doc.findtext("Owner/ID") == f"qcs::cam::uin/{account.uin}:uin/{sub_uin}"
        assert doc.findtext("Owner/DisplayName") == sub_uin
        assert list(doc.find("Coffers")) == []
        # nothing changed for the owner
        assert client.get(f"/{coffer_with_object}/{key}").content == data
        assert_error(client.get(f"/{coffer_with_object}/new.txt"), 404, "ObjectNotExists",
                     f"{coffer_with_object}/new.txt")
        owned_names = coffer_names(client.get("/"))
        assert coffer_with_object in owned_names
        assert coffer in owned_names
        assert name not in owned_names
        # a missing coffer is 404 before authorization
        missing = f"nx{secrets.token_hex(4)}-{account.app_id}"
        assert_error(sc.get(f"/{missing}"), 404, "NoSuchCoffer", missing)
        assert_error(sc.get(f"/{missing}/k"), 404, "CofferNotFound", f"{missing}/k")
        # a sub-account has keys of its own, and each is the sub-account
        second = server.admin("key", "create", "--uin", sub_uin)
        listed = server.admin("key", "list", "--uin", sub_uin)
        assert {k["SecretId"] for k in listed} == {sub["SecretId"], second["SecretId"]}
        sc2 = client_for(server, second)
        r = sc2.get("/")
        assert r.status_code == 200, r.text
        assert ET.fromstring(r.content).findtext("Owner/ID") == (
            f"qcs::cam::uin/{account.uin}:uin/{sub_uin}")
        assert_error(sc2.get(f"/{coffer_with_object}/{key}"), 401, "PolicyCheckFailed",
                     f"{coffer_with_object}/{key}")
        sc2.close()
    finally:
        sc.close()


def test_subaccount_of_unknown_parent_or_taken_uin(server, account):
    done = server.admin("subaccount", "create", "--parent-uin", "999999999999", "--uin",
                        unique_uin(), check=False)
    assert done.returncode != 0
    assert done.stdout == ""
    done = server.admin("subaccount", "create", "--parent-uin", account.uin, "--uin",
                        account.uin, check=False)
    assert done.returncode != 0
    assert done.stdout == ""


def test_other_account_root_needs_a_policy(server, client, owned, coffer):
    coffer_with_object, key, data = owned
    other = new_account(server)
    oc = SignedClient(server.base_url, other.secret_id, other.secret_key)
    try:
        refused_everywhere(oc, coffer_with_object, key, coffer)
        assert coffer_names(oc.get("/")) == []
        # a coffer of mine that does not exist: 404 before authorization
        missing = coffer.replace("-", "x-", 1)
        assert_error(oc.get(f"/{missing}"), 404, "NoSuchCoffer", missing)
        assert_error(oc.delete(f"/{missing}"), 404, "NoSuchCoffer", missing)
        assert_error(oc.get(f"/{missing}/k"), 404, "CofferNotFound", f"{missing}/k")
        assert_error(oc.put(f"/{missing}/k", content=b"x"), 404, "CofferNotFound",
                     f"{missing}/k")
        # its own coffers work as usual
        mine = f"oth{secrets.token_hex(4)}-{other.app_id}"
        oc.make_coffer(mine)
        assert coffer_names(oc.get("/")) == [mine]
        assert client.get(f"/{coffer_with_object}/{key}").content == data
        # and mine stay mine
        r = client.get(f"/{coffer}")
        assert r.status_code == 200
        assert_error(client.get(f"/{mine}"), 401, "PolicyCheckFailed", mine)
    finally:
        oc.close()


# -- API keys ----------------------------------------------------------------------------------


def test_keys_lifecycle(server):
    acct = new_account(server)
    second = server.admin("key", "create", "--uin", acct.uin)
    third = server.admin("key", "create", "--uin", acct.uin)
    assert set(second) == {"SecretId", "SecretKey"}
    keys = {acct.secret_id: acct.secret_key, second["SecretId"]: second["SecretKey"],
            third["SecretId"]: third["SecretKey"]}
    assert len(set(keys)) == 3
    assert len(set(keys.values())) == 3
    clients = {sid: SignedClient(server.base_url, sid, skey) for sid, skey in keys.items()}
    coffer = f"keys{secrets.token_hex(4)}-{acct.app_id}"
    try:
        clients[second["SecretId"]].make_coffer(coffer)
        r = clients[third["SecretId"]].put(f"/{coffer}/k", content=b"by the third key")
        assert r.status_code == 200, r.text
        for c in clients.values():  # every key is the same identity
            assert coffer_names(c.get("/")) == [coffer]
            assert c.get(f"/{coffer}/k").content == b"by the third key"

        listed = server.admin("key", "list", "--uin", acct.uin)
        assert {k["SecretId"] for k in listed} == set(keys)
        assert all(set(k) == {"SecretId", "Enabled", "CreatedMs"} for k in listed)
        assert all(k["Enabled"] is True for k in listed)
        text = json.dumps(listed)
        assert not any(skey in text for skey in keys.values())

        assert server.admin("key", "disable", "--secret-id", second["SecretId"]) == {
            "SecretId": second["SecretId"], "Result": "disable"}
        states = {k["SecretId"]: k["Enabled"]
                  for k in server.admin("key", "list", "--uin", acct.uin)}
        assert states == {acct.secret_id: True, second["SecretId"]: False,
                          third["SecretId"]: True}
        assert_error(clients[second["SecretId"]].get("/"), 401, "AuthFailed", "")
        assert coffer_names(clients[third["SecretId"]].get("/")) == [coffer]
        server.admin("key", "enable", "--secret-id", second["SecretId"])
        assert coffer_names(clients[second["SecretId"]].get("/")) == [coffer]

        server.admin("key", "delete", "--secret-id", third["SecretId"])
        assert {k["SecretId"] for k in server.admin("key", "list", "--uin", acct.uin)} == {
            acct.secret_id, second["SecretId"]}
        assert_error(clients[third["SecretId"]].get("/"), 401, "AuthFailed", "")
        # the object written with the deleted key stays
        assert clients[acct.secret_id].get(f"/{coffer}/k").content == b"by the third key"

        for args in (("key", "delete", "--secret-id", third["SecretId"]),
                     ("key", "create", "--uin", "999999999999")):
            done = server.admin(*args, check=False)
            assert done.returncode != 0, args
            assert done.stdout == "", args
    finally:
        for c in clients.values():
            c.close()


# -- secrets at rest ---------------------------------------------------------------------------


def test_secret_keys_are_not_stored_in_plain_text(server, account):
    acct = new_account(server)
    created = [server.admin("key", "create", "--uin", acct.uin)]
    sub = server.admin("subaccount", "create", "--parent-uin", acct.uin, "--uin", unique_uin())
    pairs = {acct.secret_id: acct.secret_key, account.secret_id: account.secret_key,
             sub["SecretId"]: sub["SecretKey"],
             **{d["SecretId"]: d["SecretKey"] for d in created}}
    files = sorted(server.data_dir.glob("metadata.db*"))
    assert server.data_dir / "metadata.db" in files
    stored = b"".join(p.read_bytes() for p in files)
    # the SecretIds are there (so these are the right files) but no SecretKey is
    for secret_id, secret_key in pairs.items():
        assert secret_id.encode() in stored
        assert secret_key.encode() not in stored
        assert secret_key.encode("utf-16-le") not in stored
        assert base64.b64encode(secret_key.encode()) not in stored
    root_key = server.data_dir / "keys" / "root.key"
    assert root_key.read_bytes().strip() not in stored
    assert stat.S_IMODE(root_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(root_key.parent.stat().st_mode) & 0o077 == 0
    assert len(base64.b64decode(root_key.read_bytes())) == 32


# -- the coffer limit --------------------------------------------------------------------------


def _limit_server(tmp_path, *, config=None, env=None):
    cfg = None
    if config is not None:
        cfg = tmp_path / "datacoffer.toml"
        cfg.write_text(config)
    srv = ServerProcess(tmp_path / "data", config=cfg, env=env)
    srv.start()
    return srv


def _fill(srv, count):
    """An account on `srv` and `count` coffers made by it; returns (client, names)."""
    doc = srv.admin("account", "create", "--app-id", "1250000000", "--uin", "100000000001")
    c = client_for(srv, doc)
    names = [f"lim{i:02d}-1250000000" for i in range(count)]
    for name in names:
        c.make_coffer(name)
    return c, names


def test_coffer_limit_from_config_file(tmp_path):
    srv = _limit_server(tmp_path, config="max_coffers = 3\n")
    try:
        c, names = _fill(srv, 3)
        assert_error(c.put("/lim03-1250000000", content=LOCATIONS), 409,
                     "CofferCountExceedsLimit", "lim03-1250000000")
        assert coffer_names(c.get("/")) == names
        r = c.delete(f"/{names[1]}")
        assert r.status_code == 204, r.text
        c.make_coffer("lim03-1250000000")
        assert_error(c.put("/lim04-1250000000", content=LOCATIONS), 409,
                     "CofferCountExceedsLimit", "lim04-1250000000")
        assert coffer_names(c.get("/")) == [names[0], names[2], "lim03-1250000000"]
        # the limit is per account: another account still has its own three
        other = srv.admin("account", "create", "--app-id", "1250000001", "--uin",
                          "100000000002")
        oc = client_for(srv, other)
        for i in range(3):
            oc.make_coffer(f"o{i}-1250000001")
        assert_error(oc.put("/o3-1250000001", content=LOCATIONS), 409,
                     "CofferCountExceedsLimit", "o3-1250000001")
        # the name checks come first: my own existing coffer is still "owned by you"
        assert_error(c.put(f"/{names[0]}", content=LOCATIONS), 409,
                     "CofferAlreadyOwnedByYou", names[0])
        c.close()
        oc.close()
    finally:
        srv.stop()


def test_coffer_limit_environment_beats_file(tmp_path):
    srv = _limit_server(tmp_path, config="max_coffers = 5\n",
                        env={"DATACOFFER_MAX_COFFERS": "2"})
    try:
        c, _ = _fill(srv, 2)
        assert_error(c.put("/lim02-1250000000", content=LOCATIONS), 409,
                     "CofferCountExceedsLimit", "lim02-1250000000")
        c.close()
    finally:
        srv.stop()


def test_coffer_limit_default_is_20(tmp_path):
    srv = _limit_server(tmp_path)
    try:
        c, names = _fill(srv, 20)
        r = c.put("/lim20-1250000000", content=LOCATIONS)
        assert_error(r, 409, "CofferCountExceedsLimit", "lim20-1250000000")
        assert "20" in ET.fromstring(r.content).findtext("Message")
        assert coffer_names(c.get("/")) == names
        c.close()
    finally:
        srv.stop()
