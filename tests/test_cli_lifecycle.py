"""`datacoffer lifecycle get|put dc://COFFER [--days N]` run as real processes against the
shared server (api.md 8-9): what each prints, with and without --json, the local check of
--days (no request is sent: shown by pointing --endpoint at a closed port), and the exit codes
of the server's refusals. The SDK (`sdk` fixture) sets up and checks the rule on the side.
"""

from __future__ import annotations

import json

import pytest

import tests.test_cli_policy as cli_policy
from datacoffer.client import Client, errors
from tests.conftest import Account
from tests.serverproc import SignedClient
from tests.test_access_api import fresh, resource, set_policy, statement
from tests.test_cli_client import (
    Dc,
    assert_service_error,
    assert_usage,
    ok,
    ok_json,
)
from tests.test_cli_policy import closed_endpoint, help_examples

#: the CLI policy tests' module fixtures: profiles of the shared account's root and of a
#: sub-account (made once for this module too)
dc = cli_policy.dc
sub_dc = cli_policy.sub_dc


def no_rule(sdk: Client, coffer: str) -> bool:
    try:
        sdk.get_coffer_lifecycle(coffer)
    except errors.NoSuchLifecycleConfiguration:
        return True
    return False


# -- put and get -------------------------------------------------------------------------


@pytest.mark.parametrize("days", [1, 3650])
@pytest.mark.parametrize("form", ["dc://{c}", "dc://{c}/"], ids=["bare", "slash"])
def test_put_then_get(dc: Dc, sdk: Client, coffer: str, form: str, days: int) -> None:
    target = form.format(c=coffer)
    done = dc("lifecycle", "put", target, "--days", str(days))
    assert ok(done) == f"objects in dc://{coffer}/ now expire {days} days after their upload\n"
    assert done.stderr == ""
    assert sdk.get_coffer_lifecycle(coffer) == days
    done = dc("lifecycle", "get", target)
    assert ok(done) == f"objects in dc://{coffer}/ expire {days} days after their upload\n"
    assert done.stderr == ""


def test_json_output_and_replacing(dc: Dc, sdk: Client, coffer: str) -> None:
    sdk.put_coffer_lifecycle(coffer, 10)
    done = dc("lifecycle", "put", f"dc://{coffer}", "--days", "20", "--json")
    assert ok_json(done) == {"Coffer": coffer, "Days": 20}
    assert done.stderr == ""
    assert sdk.get_coffer_lifecycle(coffer) == 20
    done = dc("lifecycle", "get", f"dc://{coffer}", "--json")
    assert json.loads(ok(done)) == {"Coffer": coffer, "Days": 20}
    assert done.stderr == ""


def test_get_without_a_rule(dc: Dc, coffer: str) -> None:
    assert_service_error(dc("lifecycle", "get", f"dc://{coffer}"), 4,
                         "NoSuchLifecycleConfiguration")
    done = dc("lifecycle", "get", f"dc://{coffer}", "--json")
    assert done.returncode == 4
    assert done.stdout == ""
    error = json.loads(done.stderr)["Error"]
    assert (error["Code"], error["Resource"]) == ("NoSuchLifecycleConfiguration", coffer)


# -- refused before a request ------------------------------------------------------------


@pytest.mark.parametrize(("args", "fragment"), [
    (("--days", "0"), "1<=x<=3650"),
    (("--days", "3651"), "1<=x<=3650"),
    (("--days", "-1"), "1<=x<=3650"),
    (("--days", "thirty"), "'thirty' is not a valid integer"),
    ((), "Missing option '--days'"),
], ids=["zero", "3651", "negative", "not-a-number", "missing"])
def test_put_checks_days_without_a_request(dc: Dc, sdk: Client, coffer: str,
                                           args: tuple[str, ...], fragment: str) -> None:
    done = dc("lifecycle", "put", f"dc://{coffer}", *args, "--endpoint", closed_endpoint())
    assert_usage(done, fragment)
    if args:
        assert "--days" in done.stderr
    assert no_rule(sdk, coffer)


@pytest.mark.parametrize("command", ["get", "put"])
def test_a_key_instead_of_a_coffer(dc: Dc, coffer: str, command: str) -> None:
    extra = ["--days", "30"] if command == "put" else []
    assert_usage(dc("lifecycle", command, f"dc://{coffer}/k", *extra, "--endpoint",
                    closed_endpoint()),
                 "dc://COFFER), not an object key")


# -- refused by the server ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["get", "put"])
def test_missing_coffer(dc: Dc, coffer_name: str, command: str) -> None:
    extra = ["--days", "30"] if command == "put" else []
    assert_service_error(dc("lifecycle", command, f"dc://{coffer_name}", *extra), 4,
                         "NoSuchCoffer")


def test_a_sub_account_needs_a_grant(sub_dc: Dc, client: SignedClient, sdk: Client,
                                     account: Account, sub: Account) -> None:
    coffer = fresh(account.app_id, "cl")
    client.make_coffer(coffer)
    sdk.put_coffer_lifecycle(coffer, 5)
    for args in (("get",), ("put", "--days", "6")):
        command, *rest = args
        assert_service_error(sub_dc("lifecycle", command, f"dc://{coffer}", *rest), 3,
                             "PolicyCheckFailed")
    assert sdk.get_coffer_lifecycle(coffer) == 5
    set_policy(client, coffer, statement(
        [f"qcs::cam::uin/{account.uin}:uin/{sub.uin}"], "allow",
        ["name/cdcs:PutCofferLifecycle", "name/cdcs:GetCofferLifecycle"],
        [resource(account.app_id, coffer)]))
    done = sub_dc("lifecycle", "put", f"dc://{coffer}", "--days", "6")
    assert ok(done) == f"objects in dc://{coffer}/ now expire 6 days after their upload\n"
    assert ok(sub_dc("lifecycle", "get", f"dc://{coffer}", "--json")) == json.dumps(
        {"Coffer": coffer, "Days": 6}, indent=2) + "\n"
    assert sdk.get_coffer_lifecycle(coffer) == 6


# -- help --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["lifecycle", "lifecycle get", "lifecycle put"])
def test_help_has_an_example(dc: Dc, command: str) -> None:
    help_examples(dc, command)
