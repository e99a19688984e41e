"""Temporary credentials end to end (security.md "Identities", service.md `admin token`):
issuing, listing and revoking them with the operator's commands, using them over HTTP with
the SDK, raw signed requests and presigned URLs, every way they are refused, inline policies
that narrow them, secrets at rest, the whitelist, and the command-line client.

Everything runs against the shared server process; the admin commands run as processes
beside it. Tokens cost a process each (~0.8 s), so the module issues only what it needs,
in module-scoped fixtures.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sqlite3
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from datacoffer import signing
from datacoffer.client import Client, errors
from tests.conftest import Account, new_account
from tests.serverproc import BIN, ServerProcess, SignedClient
from tests.test_cli_client import assert_service_error, clean_env, ok, run
from tests.test_identities import coffer_names, unique_uin
from tests.test_signing import assert_error, presigned_url, send, sign_for

TOKEN = "x-cdcs-security-token"
LOCATIONS = json.dumps({"Locations": {"Location": ["ap-tianjin"]}})
DOC = b"the document of the coffer"
#: a fragment of the message of a refusal of temporary credentials
TMP_REFUSED = "temporary credentials"


# -- helpers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tmp:
    """Temporary credentials as `admin token issue` printed them."""

    secret_id: str
    secret_key: str
    token: str
    expired_time: int
    doc: dict[str, Any]
    #: time.time() just before and just after the issuing command ran
    issued: tuple[float, float]

    def sdk(self, server: ServerProcess) -> Client:
        return Client(server.base_url, self.secret_id, self.secret_key, token=self.token)


def issue(server: ServerProcess, uin: str, *args: str, stdin: str | None = None) -> Tmp:
    """Run `admin token issue --uin UIN ARGS`; its output as `Tmp`."""
    before = time.time()
    doc = server.admin("token", "issue", "--uin", uin, *args, stdin=stdin)
    after = time.time()
    return Tmp(doc["TmpSecretId"], doc["TmpSecretKey"], doc["Token"], doc["ExpiredTime"], doc,
               (before, after))


def admin_fails(server: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    """An admin command that must fail: nothing on stdout."""
    done = server.admin(*args, check=False)
    assert isinstance(done, subprocess.CompletedProcess), f"{args} succeeded: {done}"
    assert done.stdout == ""
    return done


def call(server: ServerProcess, creds: Any, method: str, path: str, *,
         params: dict[str, str] | None = None, content: bytes | str | None = None,
         token: str | None = None, via: str = "header") -> httpx.Response:
    """`method path` signed with `creds`' secret_id/secret_key (Host and the parameters
    signed), carrying `token` (none if None) in the header or, via="query", as an unsigned
    query parameter."""
    fields = sign_for(server, creds, method, path, params)
    query = list((params or {}).items())
    headers = {}
    if token is not None:
        if via == "query":
            query.append((TOKEN, token))
        else:
            headers[TOKEN] = token
    return send(server, method, path, fields=fields, query=query, headers=headers,
                content=content)


def use(server: ServerProcess, tmp: Tmp, method: str, path: str, **kw: Any) -> httpx.Response:
    """A raw request made with temporary credentials and their own token."""
    return call(server, tmp, method, path, token=tmp.token, **kw)


def forge(token: str) -> str:
    """The token with its first eight characters changed."""
    return "".join("x" if c != "x" else "y" for c in token[:8]) + token[8:]


def resource(app_id: str, path: str) -> str:
    return f"qcs::cdcs::uid/{app_id}:{path}"


def statement(effect: str, actions: list[str], app_id: str, *paths: str,
              principal: str | None = None) -> dict[str, Any]:
    """One statement in canonical form (lists, Effect lower-case)."""
    doc: dict[str, Any] = {}
    if principal is not None:
        doc["Principal"] = {"qcs": [principal]}
    doc |= {"Effect": effect, "Action": [f"name/cdcs:{a}" for a in actions],
            "Resource": [resource(app_id, p) for p in paths]}
    return doc


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"version": "2.0", "Statement": list(statements)})


def expire(server: ServerProcess, tmp: Tmp) -> None:
    """Move the credentials' expiry a minute into the past, in the server's metadata.db."""
    with closing(sqlite3.connect(server.data_dir / "metadata.db", timeout=30)) as db, db:
        cur = db.execute("UPDATE temp_credentials SET expires_ms = ? WHERE tmp_secret_id = ?",
                         (int(time.time() * 1000) - 60_000, tmp.secret_id))
        assert cur.rowcount == 1


def assert_no_secrets(r: httpx.Response, *secret_texts: str) -> None:
    """None of the secrets appears in the answer's body or headers."""
    for text in secret_texts:
        assert text not in r.text
        assert text not in str(r.headers)


def new_coffer_name(account: Account) -> str:
    return f"tkn{secrets.token_hex(4)}-{account.app_id}"


# -- fixtures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Two coffers A and B of the shared account, each holding doc.txt, and a sub-account
    to which A's policy grants GetService, GetObject and PutObject on A (B has no policy)."""

    a: str
    b: str
    sub: Account
    a_policy: dict[str, Any]


@pytest.fixture(scope="module")
def world(server: ServerProcess, client: SignedClient, account: Account) -> World:
    tag = secrets.token_hex(3)
    a, b = f"tka{tag}-{account.app_id}", f"tkb{tag}-{account.app_id}"
    for name in (a, b):
        client.make_coffer(name)
        r = client.put(f"/{name}/doc.txt", content=DOC)
        assert r.status_code == 200, r.text
    doc = server.admin("subaccount", "create", "--parent-uin", account.uin,
                       "--uin", unique_uin())
    sub = Account(account.app_id, doc["Uin"], doc["SecretId"], doc["SecretKey"])
    a_policy = {"version": "2.0", "Statement": [statement(
        "allow", ["GetService", "GetObject", "PutObject"], account.app_id, f"{a}/*",
        principal=f"qcs::cam::uin/{account.uin}:uin/{sub.uin}")]}
    r = client.put(f"/{a}", params={"policy": ""}, content=json.dumps(a_policy))
    assert r.status_code == 200, r.text
    return World(a, b, sub, a_policy)


@pytest.fixture(scope="module")
def owner(server: ServerProcess, account: Account) -> Tmp:
    """The shared account root's credentials: default duration, no inline policy."""
    return issue(server, account.uin)


@pytest.fixture(scope="module")
def t_get(server: ServerProcess, account: Account, world: World) -> Tmp:
    """The owner's root, inline policy (read from standard input): GetObject on A/* only."""
    return issue(server, account.uin, "--policy", "-", stdin=policy(
        statement("allow", ["GetObject"], account.app_id, f"{world.a}/*")))


@pytest.fixture(scope="module")
def t_deny(server: ServerProcess, account: Account, world: World,
           tmp_path_factory: pytest.TempPathFactory) -> Tmp:
    """The owner's root, inline policy (from a file): GetService, GetObject and PutObject on
    A/*, but GetObject denied on A/secret/*."""
    path = tmp_path_factory.mktemp("inline") / "deny.json"
    path.write_text(policy(
        statement("allow", ["GetService", "GetObject", "PutObject"], account.app_id,
                  f"{world.a}/*"),
        statement("deny", ["GetObject"], account.app_id, f"{world.a}/secret/*")))
    return issue(server, account.uin, "--policy", str(path))


@pytest.fixture(scope="module")
def t_sub_inline(server: ServerProcess, account: Account, world: World) -> Tmp:
    """The sub-account, inline policy: GetObject on A/* and PutObject on B/*."""
    return issue(server, world.sub.uin, "--policy", "-", stdin=policy(
        statement("allow", ["GetObject"], account.app_id, f"{world.a}/*"),
        statement("allow", ["PutObject"], account.app_id, f"{world.b}/*")))


@pytest.fixture(scope="module")
def t_sub_plain(server: ServerProcess, world: World) -> Tmp:
    """The sub-account, no inline policy."""
    return issue(server, world.sub.uin)


@pytest.fixture(scope="module")
def expired(server: ServerProcess, account: Account, world: World) -> Tmp:
    """Issued for 900 s, used once successfully, then made to expire in metadata.db."""
    tmp = issue(server, account.uin, "--duration", "900")
    r = use(server, tmp, "GET", f"/{world.a}/doc.txt")
    assert r.status_code == 200, r.text
    expire(server, tmp)
    return tmp


@dataclass
class Revoked:
    """Revoked credentials, what `token revoke` printed, and the SDK client that used them."""

    tmp: Tmp
    output: Any
    sdk: Client


@pytest.fixture(scope="module")
def revoked(server: ServerProcess, account: Account, world: World) -> Iterator[Revoked]:
    """Credentials revoked by --tmp-secret-id while an SDK client was using them."""
    tmp = issue(server, account.uin)
    with tmp.sdk(server) as sdk:
        with sdk.get_object(world.a, "doc.txt") as reader:
            assert reader.read() == DOC
        output = server.admin("token", "revoke", "--tmp-secret-id", tmp.secret_id)
        yield Revoked(tmp, output, sdk)


# -- admin token issue -------------------------------------------------------------------------


def test_issue_prints_exactly_the_four_fields(owner: Tmp, account: Account,
                                              t_get: Tmp) -> None:
    assert set(owner.doc) == {"TmpSecretId", "TmpSecretKey", "Token", "ExpiredTime"}
    for name in ("TmpSecretId", "TmpSecretKey", "Token"):
        assert isinstance(owner.doc[name], str)
        assert owner.doc[name]
    assert type(owner.expired_time) is int
    before, after = owner.issued
    # the default duration is 1800 s
    assert int(before) + 1800 <= owner.expired_time <= int(after) + 1800
    # each issue makes new credentials, unlike the account's key
    assert owner.secret_id != account.secret_id
    assert owner.secret_key != account.secret_key
    assert len({owner.secret_id, t_get.secret_id}) == 2
    assert len({owner.secret_key, t_get.secret_key}) == 2
    assert len({owner.token, t_get.token}) == 2


@pytest.mark.parametrize("duration", [900, 129600])
def test_issue_duration_bounds_are_accepted(server: ServerProcess, account: Account,
                                            world: World, duration: int) -> None:
    tmp = issue(server, account.uin, "--duration", str(duration))
    before, after = tmp.issued
    assert int(before) + duration <= tmp.expired_time <= int(after) + duration
    r = use(server, tmp, "GET", f"/{world.a}/doc.txt")
    assert r.status_code == 200, r.text
    assert r.content == DOC


@pytest.mark.parametrize("duration", ["899", "129601"])
def test_issue_duration_out_of_range_is_refused(server: ServerProcess, account: Account,
                                                duration: str) -> None:
    done = admin_fails(server, "token", "issue", "--uin", account.uin, "--duration", duration)
    assert done.returncode == 2, done.stderr
    assert "--duration" in done.stderr
    assert duration in done.stderr
    assert "900" in done.stderr
    assert "129600" in done.stderr


def test_issue_for_an_unknown_uin_is_refused(server: ServerProcess) -> None:
    done = admin_fails(server, "token", "issue", "--uin", "999999999998")
    assert done.returncode != 0
    assert "999999999998" in done.stderr


@pytest.mark.parametrize(("document", "fault"), [
    ('{"version": "2.0", "Statement": [{"Effect": "allow", "Action": "name/cdcs:HeadObject",'
     ' "Resource": "qcs::cdcs::uid/1250000000:c-1250000000/*"}]}', "CheckObject"),
    ('{"version": "2.0", "Statement": [{"Effect": "allow", "Action": '
     '"name/cdcs:PutCofferPolicy", "Resource": "qcs::cdcs::uid/1250000000:c-1250000000/*"}]}',
     "cannot be granted"),
    ('{"version": "2.0", "Statement": [{"Sid": "x", "Effect": "allow", "Action": '
     '"name/cdcs:GetObject", "Resource": "qcs::cdcs::uid/1250000000:c-1250000000/*"}]}',
     "'Sid'"),
    ('{"version": "2.0", "Statement": [', "not valid JSON"),
], ids=["HeadObject", "policy-operation", "unknown-element", "not-json"])
def test_issue_with_an_invalid_inline_policy_is_refused(server: ServerProcess, account: Account,
                                                        tmp_path: Path, document: str,
                                                        fault: str) -> None:
    path = tmp_path / "inline.json"
    path.write_text(document)
    done = admin_fails(server, "token", "issue", "--uin", account.uin, "--policy", str(path))
    assert done.returncode != 0
    assert "inline policy" in done.stderr
    assert fault in done.stderr


def test_inline_policy_read_from_stdin_is_applied(server: ServerProcess, world: World,
                                                  t_get: Tmp) -> None:
    """t_get was issued with `--policy -`: its GetObject-only policy holds."""
    r = use(server, t_get, "GET", f"/{world.a}/doc.txt")
    assert r.status_code == 200, r.text
    assert r.content == DOC
    # the inline policy allows no GetService: the owner's root sees none of its coffers
    assert coffer_names(use(server, t_get, "GET", "/")) == []


@pytest.mark.parametrize(("command", "words"), [
    (("token",), ["issue", "revoke", "list"]),
    (("token", "issue"), ["--uin", "--duration", "--policy", "900", "129600", TOKEN]),
], ids=["token", "issue"])
def test_help(command: tuple[str, ...], words: list[str]) -> None:
    done = subprocess.run([*BIN, "admin", *command, "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: ")
    for word in words:
        assert word in done.stdout, word


# -- admin token list and revoke ---------------------------------------------------------------


def test_list_shows_states_without_secrets(server: ServerProcess, account: Account, owner: Tmp,
                                           t_get: Tmp, expired: Tmp, revoked: Revoked) -> None:
    done = subprocess.run([*BIN, "admin", "token", "list", "--uin", account.uin, "--data-dir",
                           str(server.data_dir)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = {e["TmpSecretId"]: e for e in json.loads(done.stdout)}
    expect = [(owner, "valid", False), (t_get, "valid", True), (expired, "expired", False),
              (revoked.tmp, "revoked", False)]
    for tmp, state, inline in expect:
        entry = listed[tmp.secret_id]
        assert entry["State"] == state
        assert entry["InlinePolicy"] is inline
        if tmp is not expired:
            assert entry["ExpiredTime"] == tmp.expired_time
        assert not {"TmpSecretKey", "Token", "SecretKey"} & set(entry)
        assert tmp.secret_key not in done.stdout
        assert tmp.token not in done.stdout
    # the expired one now ends in the past
    assert listed[expired.secret_id]["ExpiredTime"] < time.time()


def test_list_of_another_identity(server: ServerProcess, world: World, t_sub_plain: Tmp,
                                  owner: Tmp) -> None:
    listed = server.admin("token", "list", "--uin", world.sub.uin)
    ids = [e["TmpSecretId"] for e in listed]
    assert t_sub_plain.secret_id in ids
    assert owner.secret_id not in ids


def test_revoke_while_in_use(server: ServerProcess, world: World, revoked: Revoked) -> None:
    assert revoked.output == {"Revoked": 1}
    # the very client that was using them is refused on its next request
    with pytest.raises(errors.AuthFailed):
        revoked.sdk.get_object(world.a, "doc.txt")
    r = use(server, revoked.tmp, "GET", f"/{world.a}/doc.txt")
    assert_error(r, 401, "AuthFailed", f"{world.a}/doc.txt")


def test_revoke_by_uin_counts_and_spares_the_identitys_keys(server: ServerProcess,
                                                            account: Account,
                                                            owner: Tmp) -> None:
    doc = server.admin("subaccount", "create", "--parent-uin", account.uin,
                       "--uin", unique_uin())
    sub = Account(account.app_id, doc["Uin"], doc["SecretId"], doc["SecretKey"])
    first, second = issue(server, sub.uin), issue(server, sub.uin)
    for tmp in (first, second):
        assert use(server, tmp, "GET", "/").status_code == 200
    assert server.admin("token", "revoke", "--uin", sub.uin) == {"Revoked": 2}
    for tmp in (first, second):
        assert_error(use(server, tmp, "GET", "/"), 401, "AuthFailed", "")
    states = {e["TmpSecretId"]: e["State"] for e in server.admin("token", "list", "--uin",
                                                                 sub.uin)}
    assert states == {first.secret_id: "revoked", second.secret_id: "revoked"}
    # the identity's permanent key is not affected
    r = call(server, sub, "GET", "/")
    assert r.status_code == 200, r.text
    # nor are other identities' temporary credentials
    r = use(server, owner, "GET", "/")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("selectors", [("--tmp-secret-id", "AKIDx", "--uin", "100000000001"),
                                       ()], ids=["both", "none"])
def test_revoke_needs_exactly_one_selector(server: ServerProcess,
                                           selectors: tuple[str, ...]) -> None:
    done = admin_fails(server, "token", "revoke", *selectors)
    assert done.returncode == 2, done.stderr
    assert "--tmp-secret-id" in done.stderr
    assert "--uin" in done.stderr


def test_revoke_of_an_unknown_id(server: ServerProcess) -> None:
    unknown = "AKID" + "Q" * 32
    done = admin_fails(server, "token", "revoke", "--tmp-secret-id", unknown)
    assert done.returncode != 0
    assert unknown in done.stderr


# -- use over HTTP -----------------------------------------------------------------------------


def test_owner_credentials_do_everything_the_owner_can(server: ServerProcess, account: Account,
                                                      world: World, owner: Tmp) -> None:
    name = new_coffer_name(account)
    principal = f"qcs::cam::uin/{account.uin}:uin/{world.sub.uin}"
    granted = {"version": "2.0", "Statement": [statement(
        "allow", ["GetObject"], account.app_id, f"{name}/*", principal=principal)]}
    with owner.sdk(server) as sdk:
        sdk.create_coffer(name, ["ap-tianjin"])
        assert name in [c.name for c in sdk.list_coffers().coffers]
        sdk.put_object(name, "k.txt", b"written with a token")
        with sdk.get_object(name, "k.txt") as reader:
            assert reader.read() == b"written with a token"
        assert sdk.head_object(name, "k.txt").size == len(b"written with a token")
        assert [o.key for o in sdk.list_objects(name)] == ["k.txt"]
        with sdk.get_object(world.a, "doc.txt") as reader:
            assert reader.read() == DOC
        sdk.put_coffer_policy(name, granted)
        assert sdk.get_coffer_policy(name) == granted
        # the policy took effect: the sub-account may read now
        r = call(server, world.sub, "GET", f"/{name}/k.txt")
        assert r.status_code == 200, r.text
        sdk.delete_coffer_policy(name)
        assert sdk.get_coffer_policy(name) == {"Statement": [], "version": "2.0"}
    # the object was written by the owner's root itself: its own write again is "by you"
    r = call(server, account, "PUT", f"/{name}/k.txt", content=b"again")
    assert_error(r, 409, "ObjectAlreadyExistsOwnedByYou", f"{name}/k.txt")


@pytest.mark.parametrize("via", ["header", "query"])
def test_token_in_header_or_query(server: ServerProcess, world: World, owner: Tmp,
                                  via: str) -> None:
    r = use(server, owner, "GET", f"/{world.a}/doc.txt", via=via)
    assert r.status_code == 200, r.text
    assert r.content == DOC
    key = f"via-{via}-{secrets.token_hex(3)}.txt"
    r = use(server, owner, "PUT", f"/{world.a}/{key}", content=b"put " + via.encode(), via=via)
    assert r.status_code == 200, r.text
    r = use(server, owner, "GET", f"/{world.a}", params={"prefix": key}, via=via)
    assert r.status_code == 200, r.text
    assert f"<Key>{key}</Key>" in r.text


def test_presigned_url_with_temporary_credentials(server: ServerProcess, world: World,
                                                  owner: Tmp) -> None:
    path = f"/{world.a}/doc.txt"
    url = presigned_url(server, owner.secret_id, owner.secret_key, path)
    r = httpx.get(url + f"&{TOKEN}={signing.urlencode(owner.token)}")
    assert "authorization" not in r.request.headers
    assert r.status_code == 200, r.text
    assert r.content == DOC
    # without the token, or with another, the URL is refused
    assert_error(httpx.get(url), 401, "AuthFailed", path[1:])
    r = httpx.get(url + f"&{TOKEN}={signing.urlencode(forge(owner.token))}")
    assert_error(r, 401, "AuthFailed", path[1:])
    # the SDK's presign adds the token itself
    with owner.sdk(server) as sdk:
        r = httpx.get(sdk.presign("GET", world.a, "doc.txt", expires=600))
    assert r.status_code == 200, r.text
    assert r.content == DOC


# -- refusals ----------------------------------------------------------------------------------


def refusal(case: str, get: Callable[[str], Any]) -> tuple[str, str, str | None, str]:
    """(SecretId, SecretKey, token or None, a fragment of the message) of a refused case;
    `get` gives a fixture's value."""
    own: Tmp = get("owner")
    if case in ("expired", "revoked"):
        tmp: Tmp = get("expired") if case == "expired" else get("revoked").tmp
        return tmp.secret_id, tmp.secret_key, tmp.token, TMP_REFUSED
    if case == "forged token":
        return own.secret_id, own.secret_key, forge(own.token), TMP_REFUSED
    if case == "token of other credentials":
        return own.secret_id, own.secret_key, get("t_get").token, TMP_REFUSED
    if case == "token of another identity":
        return own.secret_id, own.secret_key, get("t_sub_plain").token, TMP_REFUSED
    if case == "wrong TmpSecretKey":
        return own.secret_id, secrets.token_hex(16), own.token, "SecretKey"
    if case == "permanent key with a token":
        acc: Account = get("account")
        return acc.secret_id, acc.secret_key, own.token, TMP_REFUSED
    assert case == "TmpSecretId without token"
    return own.secret_id, own.secret_key, None, "SecretId"


@pytest.mark.parametrize("case", [
    "expired", "revoked", "forged token", "token of other credentials",
    "token of another identity", "wrong TmpSecretKey", "permanent key with a token",
    "TmpSecretId without token"])
def test_refused_credentials(request: pytest.FixtureRequest, server: ServerProcess,
                             world: World, account: Account, owner: Tmp, case: str) -> None:
    secret_id, secret_key, token, fragment = refusal(case, request.getfixturevalue)
    creds = Account(account.app_id, "", secret_id, secret_key)
    secret_texts = {owner.token, owner.secret_key, account.secret_key, secret_key,
                    *([token] if token else [])}
    for via, method, path, resource_name in (
            ("header", "GET", f"/{world.a}/doc.txt", f"{world.a}/doc.txt"),
            ("query", "GET", "/", ""),
            ("header", "PUT", f"/{world.a}/refused.txt", f"{world.a}/refused.txt")):
        r = call(server, creds, method, path, token=token, via=via,
                 content=b"x" if method == "PUT" else None)
        message = assert_error(r, 401, "AuthFailed", resource_name)
        assert fragment in message, message
        assert_no_secrets(r, *secret_texts)
    # nothing was written
    r = call(server, account, "GET", f"/{world.a}/refused.txt")
    assert_error(r, 404, "ObjectNotExists", f"{world.a}/refused.txt")


# -- inline policies ---------------------------------------------------------------------------


def test_inline_policy_allows_what_it_grants(server: ServerProcess, world: World,
                                             t_get: Tmp) -> None:
    r = use(server, t_get, "GET", f"/{world.a}/doc.txt")
    assert r.status_code == 200, r.text
    assert r.content == DOC


@pytest.mark.parametrize(("method", "path", "params", "content"), [
    ("PUT", "{a}/new-{tag}.txt", None, b"not allowed"),
    ("GET", "{b}/doc.txt", None, None),
    ("PUT", "{new}", None, LOCATIONS),
    ("PUT", "{a}", {"policy": ""}, "{policy}"),
    ("GET", "{a}", {"policy": ""}, None),
    ("DELETE", "{a}", {"policy": ""}, None),
], ids=["PutObject", "GetObject-other-coffer", "PutCoffer", "PutCofferPolicy",
        "GetCofferPolicy", "DeleteCofferPolicy"])
def test_inline_policy_narrows_the_owners_root(server: ServerProcess, account: Account,
                                               world: World, t_get: Tmp, method: str,
                                               path: str, params: dict[str, str] | None,
                                               content: Any) -> None:
    new, tag = new_coffer_name(account), secrets.token_hex(3)
    target = path.format(a=world.a, b=world.b, new=new, tag=tag)
    if content == "{policy}":
        content = json.dumps(world.a_policy)
    r = use(server, t_get, method, f"/{target}", params=params, content=content)
    assert_error(r, 401, "PolicyCheckFailed", target)
    # nothing changed: no new object or coffer, A's policy as it was
    r = call(server, account, "GET", f"/{world.a}/new-{tag}.txt")
    assert_error(r, 404, "ObjectNotExists", f"{world.a}/new-{tag}.txt")
    assert new not in coffer_names(call(server, account, "GET", "/"))
    r = call(server, account, "GET", f"/{world.a}", params={"policy": ""})
    assert r.status_code == 200, r.text
    assert json.loads(r.content) == world.a_policy


def test_inline_policy_get_service_lists_only_what_it_allows(server: ServerProcess,
                                                             account: Account, world: World,
                                                             t_deny: Tmp) -> None:
    everything = coffer_names(call(server, account, "GET", "/"))
    assert {world.a, world.b} <= set(everything)
    assert coffer_names(use(server, t_deny, "GET", "/")) == [world.a]


def test_inline_policy_deny_wins(server: ServerProcess, account: Account, world: World,
                                 t_deny: Tmp) -> None:
    key = f"secret/{secrets.token_hex(3)}.txt"
    r = use(server, t_deny, "PUT", f"/{world.a}/{key}", content=b"hidden")
    assert r.status_code == 200, r.text
    assert_error(use(server, t_deny, "GET", f"/{world.a}/{key}"), 401, "PolicyCheckFailed",
                 f"{world.a}/{key}")
    r = use(server, t_deny, "GET", f"/{world.a}/doc.txt")
    assert r.status_code == 200, r.text
    # the owner's permanent key reads what the token may not
    r = call(server, account, "GET", f"/{world.a}/{key}")
    assert r.status_code == 200, r.text
    assert r.content == b"hidden"
    # and the allow does not reach coffer B
    assert_error(use(server, t_deny, "PUT", f"/{world.b}/x.txt", content=b"x"), 401,
                 "PolicyCheckFailed", f"{world.b}/x.txt")


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "{a}/doc.txt", True),
    ("PUT", "{a}/both-{tag}.txt", False),   # the coffer policy allows it, the inline one not
    ("PUT", "{b}/both-{tag}.txt", False),   # the inline policy allows it, B's policy not
], ids=["both-allow", "inline-refuses", "coffer-policy-refuses"])
def test_sub_account_token_needs_both_policies(server: ServerProcess, world: World,
                                               t_sub_inline: Tmp, method: str, path: str,
                                               allowed: bool) -> None:
    target = path.format(a=world.a, b=world.b, tag=secrets.token_hex(3))
    content = b"sub" if method == "PUT" else None
    r = use(server, t_sub_inline, method, f"/{target}", content=content)
    if allowed:
        assert r.status_code == 200, r.text
        assert r.content == DOC
    else:
        assert_error(r, 401, "PolicyCheckFailed", target)


def test_sub_account_coffer_policy_alone_allows_put(server: ServerProcess, world: World) -> None:
    """The counterpart of `inline-refuses`: the sub-account's own key may PutObject on A."""
    key = f"by-key-{secrets.token_hex(3)}.txt"
    r = call(server, world.sub, "PUT", f"/{world.a}/{key}", content=b"sub")
    assert r.status_code == 200, r.text


def test_sub_account_token_get_service_needs_both(server: ServerProcess, world: World,
                                                  t_sub_inline: Tmp) -> None:
    assert coffer_names(call(server, world.sub, "GET", "/")) == [world.a]
    # the inline policy grants no GetService
    assert coffer_names(use(server, t_sub_inline, "GET", "/")) == []


@pytest.mark.parametrize(("method", "path", "params", "status", "code"), [
    ("GET", "{a}/doc.txt", None, 200, None),
    ("PUT", "{a}/plain-{who}.txt", None, 200, None),
    ("GET", "{b}/doc.txt", None, 401, "PolicyCheckFailed"),
    ("PUT", "{b}/plain-{who}.txt", None, 401, "PolicyCheckFailed"),
    ("GET", "{a}", None, 401, "PolicyCheckFailed"),
    ("PUT", "{new}", None, 401, "PolicyCheckFailed"),
    ("GET", "{a}", {"policy": ""}, 401, "PolicyCheckFailed"),
], ids=["GetObject-A", "PutObject-A", "GetObject-B", "PutObject-B", "GetCoffer-A",
        "PutCoffer", "GetCofferPolicy-A"])
def test_sub_account_token_without_inline_policy_has_its_rights(
        server: ServerProcess, account: Account, world: World, t_sub_plain: Tmp, method: str,
        path: str, params: dict[str, str] | None, status: int, code: str | None) -> None:
    """The sub-account's token and its permanent key answer alike."""
    new = new_coffer_name(account)
    for who, creds, token in (("key", world.sub, None), ("token", t_sub_plain,
                                                         t_sub_plain.token)):
        target = path.format(a=world.a, b=world.b, new=new, who=who)
        content: Any = None
        if target == new:
            content = LOCATIONS
        elif method == "PUT":
            content = b"by " + who.encode()
        r = call(server, creds, method, f"/{target}", params=params, content=content,
                 token=token)
        if code is None:
            assert r.status_code == status, (who, r.text)
            if method == "GET":
                assert r.content == DOC
        else:
            assert_error(r, status, code, target)


def test_sub_account_token_without_inline_policy_lists_like_its_key(
        server: ServerProcess, world: World, t_sub_plain: Tmp) -> None:
    assert coffer_names(use(server, t_sub_plain, "GET", "/")) == [world.a]
    assert coffer_names(call(server, world.sub, "GET", "/")) == [world.a]


# -- secrets at rest ---------------------------------------------------------------------------


def test_secrets_are_not_at_rest(server: ServerProcess, world: World, owner: Tmp, t_get: Tmp,
                                 t_deny: Tmp, t_sub_inline: Tmp, t_sub_plain: Tmp,
                                 expired: Tmp, revoked: Revoked) -> None:
    tmps = [owner, t_get, t_deny, t_sub_inline, t_sub_plain, expired, revoked.tmp]
    # use a token in the query and in the header, and fail once, so that the log has had
    # its chance to show them
    assert use(server, owner, "GET", f"/{world.a}/doc.txt", via="query").status_code == 200
    assert use(server, t_get, "GET", f"/{world.a}/doc.txt").status_code == 200
    r = call(server, owner, "GET", f"/{world.a}/doc.txt", token=forge(owner.token),
             via="query")
    assert r.status_code == 401
    trace = r.headers["x-cdcs-trace-id"]
    deadline = time.monotonic() + 5
    while trace not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log_path.read_bytes()
    assert trace.encode() in log
    wal = server.data_dir / "metadata.db-wal"
    assert wal.exists()
    stored = (server.data_dir / "metadata.db").read_bytes() + wal.read_bytes()
    for tmp in tmps:
        # these are the right files: the id and the token's SHA-256 are there
        assert tmp.secret_id.encode() in stored
        assert hashlib.sha256(tmp.token.encode()).hexdigest().encode() in stored
        for secret in (tmp.secret_key, tmp.token):
            for encoded in (secret.encode(), base64.b64encode(secret.encode()),
                            secret.encode("utf-16-le")):
                assert encoded not in stored
            assert secret.encode() not in log
    assert forge(owner.token).encode() not in log


# -- the whitelist -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def closed(server: ServerProcess) -> tuple[Account, str]:
    """An account not on the whitelist, and the UIN of a sub-account of it."""
    acc = new_account(server, "--not-whitelisted")
    sub = server.admin("subaccount", "create", "--parent-uin", acc.uin, "--uin", unique_uin())
    return acc, sub["Uin"]


@pytest.mark.parametrize("who", ["root", "sub-account"])
def test_whitelist_applies_to_temporary_credentials(server: ServerProcess,
                                                    closed: tuple[Account, str],
                                                    who: str) -> None:
    acc, sub_uin = closed
    tmp = issue(server, acc.uin if who == "root" else sub_uin)
    name = f"wl-{acc.app_id}"
    assert_error(use(server, tmp, "GET", "/"), 401, "ServiceNotOpen", "")
    assert_error(use(server, tmp, "GET", f"/{name}/k", via="query"), 401, "ServiceNotOpen",
                 f"{name}/k")
    assert_error(use(server, tmp, "PUT", f"/{name}", content=LOCATIONS), 401, "ServiceNotOpen",
                 name)
    # authentication comes first: a forged token is AuthFailed, not ServiceNotOpen
    assert_error(call(server, tmp, "GET", "/", token=forge(tmp.token)), 401, "AuthFailed", "")


# -- the command-line client -------------------------------------------------------------------


def cli_round_trip(env: dict[str, str], world: World, tmp_path: Path, *extra: str) -> None:
    """`cp` a file up, `ls` it and `cat` it back with the environment `env`."""
    prefix = f"cli-{secrets.token_hex(4)}/"
    data = b"through the command-line client\n" + secrets.token_bytes(64)
    (tmp_path / "up.bin").write_bytes(data)
    ok(run(env, "cp", str(tmp_path / "up.bin"), f"dc://{world.a}/{prefix}up.bin", *extra))
    assert ok(run(env, "ls", f"dc://{world.a}/{prefix}", *extra)) == f"{prefix}up.bin\n"
    done = run(env, "cat", f"dc://{world.a}/{prefix}up.bin", *extra, binary=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data
    listed = ok(run(env, "ls", *extra)).splitlines()
    assert {world.a, world.b} <= set(listed)


def test_cli_profile_of_temporary_credentials(server: ServerProcess, account: Account,
                                              world: World, tmp_path: Path) -> None:
    tmp = issue(server, account.uin)
    creds = tmp_path / "tmp.json"
    creds.write_text(json.dumps(tmp.doc))
    profiles = tmp_path / "profiles.toml"
    env = clean_env(profiles)
    done = run(env, "configure", "--profile", "tmp", "--endpoint", server.base_url,
               "--credentials-json", str(creds))
    assert ok(done).startswith(f"saved profile 'tmp' in {profiles} (checked: ")
    assert tomllib.loads(profiles.read_text()) == {"tmp": {
        "endpoint": server.base_url, "secret_id": tmp.secret_id, "secret_key": tmp.secret_key,
        "token": tmp.token}}
    cli_round_trip(env, world, tmp_path, "--profile", "tmp")
    assert server.admin("token", "revoke", "--tmp-secret-id", tmp.secret_id) == {"Revoked": 1}
    assert_service_error(run(env, "ls", "--profile", "tmp"), 3, "AuthFailed")


def test_cli_environment_variables(server: ServerProcess, world: World, owner: Tmp,
                                   revoked: Revoked, tmp_path: Path) -> None:
    def env_of(tmp: Tmp, token: str | None) -> dict[str, str]:
        extra = {"DATACOFFER_ENDPOINT": server.base_url, "DATACOFFER_SECRET_ID": tmp.secret_id,
                 "DATACOFFER_SECRET_KEY": tmp.secret_key}
        if token is not None:
            extra["DATACOFFER_SECURITY_TOKEN"] = token
        return clean_env(tmp_path / "absent" / "profiles.toml", **extra)

    cli_round_trip(env_of(owner, owner.token), world, tmp_path)
    assert not (tmp_path / "absent").exists()
    assert_service_error(run(env_of(revoked.tmp, revoked.tmp.token), "ls"), 3, "AuthFailed")
    assert_service_error(run(env_of(owner, None), "ls"), 3, "AuthFailed")


def test_token_query_parameter_may_be_signed(server: ServerProcess, world: World,
                                             owner: Tmp) -> None:
    """The token never needs signing, but a client that lists it in q-url-param-list is
    verified with it (a changed token then breaks the signature too)."""
    path = f"/{world.a}/doc.txt"
    fields = sign_for(server, owner, "GET", path, {TOKEN: owner.token})
    r = send(server, "GET", path, fields=fields, query=[(TOKEN, owner.token)])
    assert (r.status_code, r.content) == (200, DOC), r.text
    r = send(server, "GET", path, fields=fields, query=[(TOKEN, forge(owner.token))])
    assert_error(r, 401, "AuthFailed", path[1:])
