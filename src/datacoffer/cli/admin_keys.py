"""`datacoffer admin kms …` and `admin role …`: the built-in KMS's keys and the service role."""

from __future__ import annotations

import click

from datacoffer.cli.options import data_dir_option, emit, fail, installation
from datacoffer.kms import KmsError, KmsKey


def _key_document(key: KmsKey) -> dict[str, object]:
    return {"KeyId": key.key_id, "KeyRegion": key.region, "AppId": key.app_id,
            "Enabled": key.enabled}


@click.group()
def kms() -> None:
    """The built-in KMS: customer keys of an account, in one region each."""


@kms.command("create-key")
@click.option("--app-id", required=True, help="The account that owns the key.")
@click.option("--region", default=None,
              help="The key's region (default: the first configured region).")
@data_dir_option
def create_key(app_id: str, region: str | None, data_dir: str | None,
               config_file: str | None) -> None:
    """Create a customer key; print {KeyId, KeyRegion}.

    \b
    Example:
      datacoffer admin kms create-key --app-id 1250000000 --region ap-tianjin
      datacoffer admin role grant --app-id 1250000000
      datacoffer mb dc://vault-1250000000 --location ap-tianjin --encrypt-type 2 \\
          --key-id <KeyId> --key-region ap-tianjin
    """
    with installation(data_dir, config_file) as inst:
        inst.identities.require_account(app_id)
        regions = list(inst.settings.regions)
        region = region or regions[0]
        if region not in regions:
            fail(f"unknown region {region!r}; this installation has: {', '.join(regions)}", 2)
        try:
            key = inst.kms.create_key(app_id, region)
        except KmsError as exc:
            fail(f"the KMS could not create the key: {exc}")
    emit({"KeyId": key.key_id, "KeyRegion": key.region})


def _set_enabled(key_id: str, enabled: bool, data_dir: str | None,
                 config_file: str | None) -> None:
    with installation(data_dir, config_file) as inst:
        try:
            key = inst.kms.set_enabled(key_id, enabled)
        except KmsError as exc:
            fail(str(exc))
    emit(_key_document(key))


@kms.command("disable-key")
@click.option("--key-id", required=True, help="The key to disable.")
@data_dir_option
def disable_key(key_id: str, data_dir: str | None, config_file: str | None) -> None:
    """Disable a key: its coffers' objects can be neither written nor read (KMSFailed)
    until it is enabled again. Nothing is lost."""
    _set_enabled(key_id, False, data_dir, config_file)


@kms.command("enable-key")
@click.option("--key-id", required=True, help="The key to enable.")
@data_dir_option
def enable_key(key_id: str, data_dir: str | None, config_file: str | None) -> None:
    """Enable a disabled key again."""
    _set_enabled(key_id, True, data_dir, config_file)


@kms.command("list-keys")
@click.option("--app-id", default=None, help="Only this account's keys.")
@data_dir_option
def list_keys(app_id: str | None, data_dir: str | None, config_file: str | None) -> None:
    """List the keys (never their material)."""
    with installation(data_dir, config_file) as inst:
        emit([_key_document(k) for k in inst.kms.list_keys(app_id)])


@click.group()
def role() -> None:
    """The service role: whether the coffer service may use an account's KMS keys."""


def _role_command(name: str, granted: bool, help_text: str) -> None:
    @role.command(name, help=help_text)
    @click.option("--app-id", required=True, help="The account's AppID.")
    @data_dir_option
    def command(app_id: str, data_dir: str | None, config_file: str | None) -> None:
        with installation(data_dir, config_file) as inst:
            inst.identities.require_account(app_id)
            (inst.roles.grant if granted else inst.roles.revoke)(app_id)
        emit({"AppId": app_id, "ServiceRole": granted})


_role_command("grant", True, "Let the service use the account's KMS keys (EncryptType 2).")
_role_command("revoke", False, "Withdraw the grant: the account's EncryptType 2 coffers answer "
              "AssumeRoleFailed until it is granted again.")
