"""Coffer policies from the client side: the SDK's put/get/delete_coffer_policy, and
`datacoffer policy get|put|delete dc://COFFER [FILE]` run as real processes against the shared
server (README, "The command-line client"; security.md, "Coffer policies").

`policy put` checks the document locally first: a document that is invalid whatever the
server is never sent (shown by pointing --endpoint at a closed port), while one that only the
server can refuse (a region it does not have) is sent and refused with the server's reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from datacoffer.client import Client, errors
from tests.conftest import APP_ID, Account
from tests.serverproc import ServerProcess, SignedClient, free_port
from tests.test_cli_client import (
    Dc,
    assert_service_error,
    assert_usage,
    clean_env,
    ok,
    ok_json,
    read,
    write_profile,
)

#: What GetCofferPolicy answers for a coffer without a policy (api.md, byte for byte), as
#: `policy get` prints it.
EMPTY = {"Statement": [], "version": "2.0"}
EMPTY_TEXT = '{\n  "Statement": [],\n  "version": "2.0"\n}\n'
MAX = 20 * 1024
#: the start of every PolicyFormatCheckFailed message of the server
INVALID = "The policy is not valid: "

Doc = dict[str, Any]


# -- documents ---------------------------------------------------------------------------


def principal(account: Account, uin: str) -> str:
    return f"qcs::cam::uin/{account.uin}:uin/{uin}"


def resource(account: Account, coffer: str, pattern: str, region: str = "") -> str:
    return f"qcs::cdcs:{region}:uid/{account.app_id}:{coffer}/{pattern}"


def grant(who: str, res: str, action: str | list[str] = "name/cdcs:GetObject",
          effect: str = "allow", **more: Any) -> Doc:
    """A one-statement policy document."""
    return {"version": "2.0", "Statement": [
        {"Principal": {"qcs": [who]}, "Effect": effect, "Action": action, "Resource": res,
         **more}]}


def written(account: Account, coffer: str, who: str) -> Doc:
    """A document as a person might write it: element names in any case, single strings
    instead of lists, a condition operator in upper case and a key with spaces, a project
    segment and a non-ASCII key pattern."""
    return {"Version": "2.0", "statement": [
        {"principal": {"QCS": who}, "effect": "Allow", "action": "name/cdcs:GetObject",
         "resource": resource(account, coffer, "报告/*", "ap-tianjin"),
         "Condition": {"IP_Equal": {" qcs:ip ": "127.0.0.1"}}},
        {"Principal": {"qcs": [who]}, "Effect": "DENY",
         "Action": ["name/cdcs:Put*", "NAME/CDCS:checkobject"],
         "Resource": [f"qcs:proj-1:cdcs::uid/{account.app_id}:{coffer}/secret/*"],
         "Condition": {"date_less_than": {"qcs:current_time": "2099-01-01T00:00:00Z"}}},
    ]}


def canonical(account: Account, coffer: str, who: str) -> Doc:
    """`written` as GetCofferPolicy shows it (decision 7): lists always, Effect and operators
    in lower case, keys trimmed, values as written, elements in this order."""
    return {"version": "2.0", "Statement": [
        {"Principal": {"qcs": [who]}, "Effect": "allow", "Action": ["name/cdcs:GetObject"],
         "Resource": [resource(account, coffer, "报告/*", "ap-tianjin")],
         "Condition": {"ip_equal": {"qcs:ip": ["127.0.0.1"]}}},
        {"Principal": {"qcs": [who]}, "Effect": "deny",
         "Action": ["name/cdcs:Put*", "NAME/CDCS:checkobject"],
         "Resource": [f"qcs:proj-1:cdcs::uid/{account.app_id}:{coffer}/secret/*"],
         "Condition": {"date_less_than": {"qcs:current_time": ["2099-01-01T00:00:00Z"]}}},
    ]}


def same(got: Any, want: Any) -> None:
    """Equal, with the members of every object in the same order."""
    assert json.dumps(got, ensure_ascii=False) == json.dumps(want, ensure_ascii=False)


def padded(doc: Doc, size: int) -> bytes:
    """The document followed by spaces up to exactly `size` bytes."""
    raw = json.dumps(doc).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


#: Documents refused whatever the server: (id, builder(account, coffer, who) -> bytes, what the
#: fault's message says). The server and `policy put` name the fault in the same words.
Builder = Callable[[Account, str, str], bytes]


def _doc(make: Callable[[Account, str, str], Doc]) -> Builder:
    return lambda a, c, w: json.dumps(make(a, c, w)).encode()


LOCAL_FAULTS: list[tuple[str, Builder, str]] = [
    ("unknown-action",
     _doc(lambda a, c, w: grant(w, resource(a, c, "*"), "name/cdcs:Fly")),
     "Statement[0].Action: 'name/cdcs:Fly' names no operation of the API"),
    ("head-object",
     _doc(lambda a, c, w: grant(w, resource(a, c, "*"), "name/cdcs:HeadObject")),
     "'name/cdcs:HeadObject' names no operation of the API (HeadObject's action is "
     "CheckObject)"),
    ("policy-action",
     _doc(lambda a, c, w: grant(w, resource(a, c, "*"), "name/cdcs:PutCofferPolicy")),
     "'name/cdcs:PutCofferPolicy' cannot be granted"),
    ("other-coffer",
     _doc(lambda a, c, w: grant(w, resource(a, "other" + c, "*"))),
     "names another coffer; its path must start with "),
    ("other-app-id",
     _doc(lambda a, c, w: grant(w, f"qcs::cdcs::uid/1250000001:{c}/*")),
     f"names AppID 1250000001, not this coffer's ({APP_ID})"),
    ("unknown-element",
     _doc(lambda a, c, w: {**grant(w, resource(a, c, "*")), "Sid": "x"}),
     "the document has an unknown element 'Sid'"),
    ("star-principal",
     _doc(lambda a, c, w: grant("*", resource(a, c, "*"))),
     "Statement[0].Principal: '*' is not allowed"),
    ("invalid-json", lambda a, c, w: b'{"version": "2.0", "Statement": [}',
     "the document is not valid JSON: "),
    ("over-20-kib", lambda a, c, w: padded(grant(w, resource(a, c, "*")), MAX + 1),
     f"the document is {MAX + 1} bytes; a policy may have at most {MAX} (20 KiB)"),
]


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sub_sdk(server: ServerProcess, sub: Account) -> Iterator[Client]:
    with Client(server.base_url, sub.secret_id, sub.secret_key) as c:
        yield c


@pytest.fixture(scope="module")
def who(account: Account, sub: Account) -> str:
    """The sub-account's principal."""
    return principal(account, sub.uin)


@pytest.fixture(scope="module")
def dc(server: ServerProcess, account: Account,
       tmp_path_factory: pytest.TempPathFactory) -> Dc:
    """The client with a default profile of the shared account's root."""
    home = tmp_path_factory.mktemp("cli-policy")
    return Dc(clean_env(write_profile(home / "profiles.toml", server, account)))


@pytest.fixture(scope="module")
def sub_dc(server: ServerProcess, sub: Account, tmp_path_factory: pytest.TempPathFactory
           ) -> Dc:
    """The client with a default profile of the sub-account."""
    home = tmp_path_factory.mktemp("cli-policy-sub")
    return Dc(clean_env(write_profile(home / "profiles.toml", server, sub)))


@pytest.fixture
def policy_file(tmp_path: Path, account: Account, coffer: str, who: str) -> Path:
    """A valid document for `coffer` in a file: `written`."""
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(written(account, coffer, who), ensure_ascii=False, indent=2))
    return path


def policy_call(client: Client, operation: str, coffer: str, doc: Doc) -> Any:
    """GetCofferPolicy, PutCofferPolicy (of `doc`) or DeleteCofferPolicy through the SDK."""
    if operation == "get":
        return client.get_coffer_policy(coffer)
    if operation == "put":
        return client.put_coffer_policy(coffer, doc)
    return client.delete_coffer_policy(coffer)


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


# -- the SDK -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["dict", "str", "bytes"])
def test_sdk_put_in_each_form_and_get_canonical(sdk: Client, account: Account, coffer: str,
                                                who: str, form: str) -> None:
    doc = written(account, coffer, who)
    value: Doc | str | bytes = {
        "dict": doc, "str": json.dumps(doc, indent=4),
        "bytes": json.dumps(doc, ensure_ascii=False).encode()}[form]
    assert sdk.get_coffer_policy(coffer) == EMPTY
    assert sdk.put_coffer_policy(coffer, value) is None
    same(sdk.get_coffer_policy(coffer), canonical(account, coffer, who))


def test_sdk_put_replaces_delete_removes(sdk: Client, sub_sdk: Client, account: Account,
                                         coffer: str, who: str) -> None:
    sdk.put_object(coffer, "报告/a.txt", b"report")
    sdk.put_object(coffer, "other/b.txt", b"other")
    sdk.put_coffer_policy(coffer, written(account, coffer, who))
    # the policy is in force: the sub-account reads under 报告/ only
    assert read(sub_sdk, coffer, "报告/a.txt") == b"report"
    with pytest.raises(errors.PolicyCheckFailed):
        read(sub_sdk, coffer, "other/b.txt")

    second = grant(who, [resource(account, coffer, "other/*")], ["name/cdcs:GetObject"])
    sdk.put_coffer_policy(coffer, second)
    same(sdk.get_coffer_policy(coffer), second)  # replaced whole, not merged
    assert read(sub_sdk, coffer, "other/b.txt") == b"other"
    with pytest.raises(errors.PolicyCheckFailed):
        read(sub_sdk, coffer, "报告/a.txt")

    assert sdk.delete_coffer_policy(coffer) is None
    assert sdk.get_coffer_policy(coffer) == EMPTY
    with pytest.raises(errors.PolicyCheckFailed):
        read(sub_sdk, coffer, "other/b.txt")
    sdk.delete_coffer_policy(coffer)  # nothing to delete: still fine
    assert sdk.get_coffer_policy(coffer) == EMPTY


def test_sdk_document_of_exactly_20_kib(sdk: Client, account: Account, coffer: str,
                                       who: str) -> None:
    doc = grant(who, [resource(account, coffer, "*")], ["name/cdcs:GetObject"])
    sdk.put_coffer_policy(coffer, padded(doc, MAX))
    same(sdk.get_coffer_policy(coffer), doc)


def test_sdk_a_compact_policy_of_20_kib_still_decides(server: ServerProcess, sdk: Client,
                                                      sub: Account, account: Account,
                                                      coffer: str, who: str) -> None:
    def statements(n: int) -> Doc:
        return {"version": "2.0", "Statement": [
            {"Principal": {"qcs": who}, "Effect": "allow", "Action": "name/cdcs:GetObject",
             "Resource": resource(account, coffer, f"k{i:03d}/*")} for i in range(n)]}

    def compact(doc: Doc) -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    n = 1
    while len(compact(statements(n + 1))) <= MAX:
        n += 1
    doc = statements(n)
    sdk.put_object(coffer, f"k{n - 1:03d}/x.txt", b"granted")
    sdk.put_coffer_policy(coffer, compact(doc))  # accepted: at most 20 KiB as sent
    shown = sdk.get_coffer_policy(coffer)
    assert len(shown["Statement"]) == n
    assert len(json.dumps(shown, ensure_ascii=False).encode()) > MAX  # stored: over 20 KiB
    sc = SignedClient(server.base_url, sub.secret_id, sub.secret_key)
    try:
        r = sc.get(f"/{coffer}/k{n - 1:03d}/x.txt")
    finally:
        sc.close()
    assert (r.status_code, r.content) == (200, b"granted"), r.text


#: Refused by the server: (id, builder, what its message says). The region is the server's
#: own check; the rest are the local faults, which the SDK sends all the same.
SERVER_FAULTS = [
    ("unknown-region",
     _doc(lambda a, c, w: grant(w, resource(a, c, "*", "ap-nowhere"))),
     "names region 'ap-nowhere', which this server does not have"),
    *[(name, build, fault) for name, build, fault in LOCAL_FAULTS if name != "over-20-kib"],
    ("over-20-kib", lambda a, c, w: padded(grant(w, resource(a, c, "*")), MAX + 1),
     f"it is over {MAX} bytes (20 KiB)"),
]


@pytest.mark.parametrize(("build", "fault"), [(b, f) for _, b, f in SERVER_FAULTS],
                         ids=[n for n, _, _ in SERVER_FAULTS])
def test_sdk_refused_document(sdk: Client, account: Account, coffer: str, who: str,
                              build: Builder, fault: str) -> None:
    before = grant(who, [resource(account, coffer, "kept/*")], ["name/cdcs:GetObject"])
    sdk.put_coffer_policy(coffer, before)
    with pytest.raises(errors.PolicyFormatCheckFailed) as caught:
        sdk.put_coffer_policy(coffer, build(account, coffer, who))
    assert caught.value.status == 409
    assert caught.value.resource == coffer
    assert caught.value.message.startswith(INVALID), caught.value.message
    assert fault in caught.value.message, caught.value.message
    same(sdk.get_coffer_policy(coffer), before)  # the stored policy is untouched


@pytest.mark.parametrize("operation", ["get", "put", "delete"])
def test_sdk_only_the_owners_root(sdk: Client, sub_sdk: Client, account: Account,
                                  coffer: str, who: str, operation: str) -> None:
    # even with every grantable action granted, the policy operations stay the owner's
    everything = grant(who, [resource(account, coffer, ""), resource(account, coffer, "*")],
                       ["name/cdcs:*"])
    sdk.put_coffer_policy(coffer, everything)
    with pytest.raises(errors.PolicyCheckFailed) as caught:
        policy_call(sub_sdk, operation, coffer, grant(who, resource(account, coffer, "*")))
    assert caught.value.status == 401
    assert caught.value.resource == coffer
    name = {"get": "GetCofferPolicy", "put": "PutCofferPolicy",
            "delete": "DeleteCofferPolicy"}[operation]
    assert name in caught.value.message, caught.value.message
    same(sdk.get_coffer_policy(coffer), everything)


@pytest.mark.parametrize("operation", ["get", "put", "delete"])
def test_sdk_missing_coffer(sdk: Client, sub_sdk: Client, account: Account, coffer_name: str,
                            who: str, operation: str) -> None:
    doc = grant(who, resource(account, coffer_name, "*"))
    for client in (sdk, sub_sdk):  # 404 comes before the owner check
        with pytest.raises(errors.NoSuchCoffer) as caught:
            policy_call(client, operation, coffer_name, doc)
        assert caught.value.status == 404
        assert caught.value.resource == coffer_name


# -- datacoffer policy put ---------------------------------------------------------------


def test_put_file_then_get(dc: Dc, sdk: Client, account: Account, coffer: str, who: str,
                           policy_file: Path) -> None:
    done = dc("policy", "put", f"dc://{coffer}", str(policy_file))
    assert ok(done) == f"replaced the policy of dc://{coffer}/\n"
    assert done.stderr == ""
    same(sdk.get_coffer_policy(coffer), canonical(account, coffer, who))
    # `policy get` prints the canonical document, as the server orders it
    done = dc("policy", "get", f"dc://{coffer}")
    same(ok_json(done), canonical(account, coffer, who))
    assert done.stdout == json.dumps(canonical(account, coffer, who), indent=2,
                                     ensure_ascii=False) + "\n"
    assert done.stderr == ""


def test_put_from_stdin(dc: Dc, sdk: Client, account: Account, coffer: str,
                        who: str) -> None:
    text = json.dumps(written(account, coffer, who), ensure_ascii=False)
    assert ok(dc("policy", "put", f"dc://{coffer}", "-", stdin=text)) == \
        f"replaced the policy of dc://{coffer}/\n"
    same(sdk.get_coffer_policy(coffer), canonical(account, coffer, who))


def test_put_json(dc: Dc, sdk: Client, account: Account, coffer: str, who: str,
                  policy_file: Path) -> None:
    done = dc("policy", "put", f"dc://{coffer}", str(policy_file), "--json")
    assert ok_json(done) == {"Coffer": coffer, "Policy": "replaced"}
    assert done.stderr == ""
    same(sdk.get_coffer_policy(coffer), canonical(account, coffer, who))


#: the faults `policy put` is tried with (every one of LOCAL_FAULTS goes to the server above)
CLI_FAULTS = [f for f in LOCAL_FAULTS
              if f[0] in ("unknown-action", "head-object", "other-coffer", "invalid-json",
                          "over-20-kib")]


@pytest.mark.parametrize(("build", "fault"), [(b, f) for _, b, f in CLI_FAULTS],
                         ids=[n for n, _, _ in CLI_FAULTS])
def test_put_refuses_an_invalid_file_without_a_request(dc: Dc, sdk: Client, account: Account,
                                                       coffer: str, who: str, tmp_path: Path,
                                                       build: Builder, fault: str) -> None:
    path = tmp_path / "bad policy.json"
    path.write_bytes(build(account, coffer, who))
    # nothing listens there: a request would end in a connection error (exit 1)
    done = dc("policy", "put", f"dc://{coffer}", str(path), "--endpoint", closed_endpoint())
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {path}: the policy is not valid: "), done.stderr
    assert fault in lines[0], done.stderr
    assert sdk.get_coffer_policy(coffer) == EMPTY


def test_put_refuses_invalid_stdin_without_a_request(dc: Dc, coffer: str) -> None:
    done = dc("policy", "put", f"dc://{coffer}", "-", "--endpoint", closed_endpoint(),
              stdin='{"version": "1.0", "Statement": []}')
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr == 'error: <stdin>: the policy is not valid: version must be "2.0"\n'


def test_put_of_a_valid_file_does_send_it(dc: Dc, coffer: str, policy_file: Path) -> None:
    """The control of the tests above: with a valid document the closed port is reached."""
    done = dc("policy", "put", f"dc://{coffer}", str(policy_file), "--endpoint",
              closed_endpoint())
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith("error: "), done.stderr
    assert "Connect" in done.stderr, done.stderr


def test_put_json_reports_a_local_fault_as_json(dc: Dc, account: Account, coffer: str,
                                                who: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(grant(who, resource(account, coffer, "*"), "name/cdcs:Fly")))
    done = dc("policy", "put", f"dc://{coffer}", str(path), "--json", "--endpoint",
              closed_endpoint())
    assert done.returncode == 2
    assert done.stdout == ""
    error = json.loads(done.stderr)["Error"]
    # the code the server would give, so that scripts switch on one value
    assert error["Code"] == "PolicyFormatCheckFailed"
    assert error["Resource"] == coffer
    assert str(path) in error["Message"]
    assert "'name/cdcs:Fly' names no operation of the API" in error["Message"]


def test_put_refused_by_the_server(dc: Dc, sdk: Client, account: Account, coffer: str,
                                   who: str, tmp_path: Path) -> None:
    """Valid as far as the client can tell; only the server knows its regions."""
    kept = grant(who, [resource(account, coffer, "kept/*")], ["name/cdcs:GetObject"])
    sdk.put_coffer_policy(coffer, kept)
    res = resource(account, coffer, "*", "ap-nowhere")
    path = tmp_path / "nowhere.json"
    path.write_text(json.dumps(grant(who, res)))
    message = assert_service_error(dc("policy", "put", f"dc://{coffer}", str(path)), 5,
                                   "PolicyFormatCheckFailed")
    assert message == (f"{INVALID}Statement[0].Resource: {res!r} names region 'ap-nowhere', "
                       "which this server does not have.")
    done = dc("policy", "put", f"dc://{coffer}", str(path), "--json")
    assert done.returncode == 5
    assert done.stdout == ""
    error = json.loads(done.stderr)["Error"]
    assert (error["Code"], error["Message"], error["Resource"]) == (
        "PolicyFormatCheckFailed", message, coffer)
    same(sdk.get_coffer_policy(coffer), kept)


@pytest.mark.parametrize("args", [("get",), ("put", "FILE"), ("delete",)],
                         ids=["get", "put", "delete"])
def test_a_key_instead_of_a_coffer(dc: Dc, coffer: str, policy_file: Path,
                                   args: tuple[str, ...]) -> None:
    command, *rest = args
    extra = [str(policy_file)] if rest else []
    assert_usage(dc("policy", command, f"dc://{coffer}/k", *extra, "--endpoint",
                    closed_endpoint()),
                 f"policy {command} takes a coffer (dc://COFFER), not an object key")


def test_put_with_an_invalid_coffer_name_or_file(dc: Dc, policy_file: Path,
                                                 tmp_path: Path) -> None:
    assert_usage(dc("policy", "put", "dc://nodash", str(policy_file)),
                 "A coffer name is <name>-<AppID>")
    assert_usage(dc("policy", "put", "dc://x-1250000000", str(tmp_path / "none.json")),
                 "none.json")


# -- datacoffer policy get / delete; who may ---------------------------------------------


def test_get_without_a_policy(dc: Dc, coffer: str) -> None:
    done = dc("policy", "get", f"dc://{coffer}")
    assert ok(done) == EMPTY_TEXT
    assert done.stderr == ""


def test_delete(dc: Dc, sdk: Client, account: Account, coffer: str, who: str) -> None:
    sdk.put_coffer_policy(coffer, written(account, coffer, who))
    done = dc("policy", "delete", f"dc://{coffer}")
    assert ok(done) == f"deleted the policy of dc://{coffer}/\n"
    assert done.stderr == ""
    assert sdk.get_coffer_policy(coffer) == EMPTY
    done = dc("policy", "delete", f"dc://{coffer}", "--json")  # none left: still 0
    assert ok_json(done) == {"Coffer": coffer, "Policy": "deleted"}


@pytest.mark.parametrize("command", ["get", "put", "delete"])
def test_a_sub_account_is_refused(sub_dc: Dc, sdk: Client, account: Account,
                                  coffer: str, who: str, policy_file: Path,
                                  command: str) -> None:
    everything = grant(who, [resource(account, coffer, ""), resource(account, coffer, "*")],
                       ["name/cdcs:*"])
    sdk.put_coffer_policy(coffer, everything)
    extra = [str(policy_file)] if command == "put" else []
    message = assert_service_error(sub_dc("policy", command, f"dc://{coffer}", *extra), 3,
                                   "PolicyCheckFailed")
    name = {"get": "Get", "put": "Put", "delete": "Delete"}[command] + "CofferPolicy"
    assert message == f"Only the coffer owner's root identity may call {name}."
    same(sdk.get_coffer_policy(coffer), everything)


@pytest.mark.parametrize("command", ["get", "put", "delete"])
def test_missing_coffer(dc: Dc, account: Account, coffer_name: str, who: str,
                        tmp_path: Path, command: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(grant(who, resource(account, coffer_name, "*"))))
    extra = [str(path)] if command == "put" else []
    assert_service_error(dc("policy", command, f"dc://{coffer_name}", *extra), 4,
                         "NoSuchCoffer")


# -- help --------------------------------------------------------------------------------


def help_examples(dc: Dc, command: str) -> list[str]:
    """The example lines of `command --help`, checked to include one of `command` itself."""
    out = ok(dc(*command.split(), "--help"))
    # (`python -m datacoffer` names itself so; the console script says `datacoffer`)
    assert out.startswith(f"Usage: python -m datacoffer {command} "), out
    heading = re.search(r"^  Examples?:\n((?:    .*\n)+)", out, re.MULTILINE)
    assert heading, out
    examples = [line.strip() for line in heading.group(1).splitlines()]
    assert any(e.startswith(f"datacoffer {command} ") for e in examples), examples
    return examples


@pytest.mark.parametrize("command", [
    "policy", "policy get", "policy put", "policy delete"])
def test_help_has_an_example(dc: Dc, command: str) -> None:
    examples = help_examples(dc, command)
    if command == "policy put":
        assert "datacoffer policy put dc://reports-1250000000 policy.json" in examples
