"""common.config: every missing or malformed value gives one message naming file, section and key."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from common import REPOSITORY_ROOT
from common.config import (
    DEFAULT_CONFIGURATION_PATH,
    ConfigError,
    environment_variable_name,
    load_settings,
    redact_secrets,
    sample_configuration_path,
)
from common.local import AZURITE_ACCOUNT_KEY, LOCALBATCH_ACCOUNT_KEY

SAMPLE1_CONFIG = sample_configuration_path("sample1_helloworld.py")
SAMPLE2_CONFIG = sample_configuration_path("sample2_pools_and_resourcefiles.py")
NO_OVERRIDES: dict[str, str] = {}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def shipped_configuration_with(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of configuration.cfg with one piece of text replaced."""
    text = DEFAULT_CONFIGURATION_PATH.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in configuration.cfg"
    return write(tmp_path / "configuration.cfg", text.replace(old, new))


def test_the_shipped_files_point_at_the_local_stack() -> None:
    settings = load_settings(None, SAMPLE2_CONFIG, environ=NO_OVERRIDES)

    assert settings.configuration_path == REPOSITORY_ROOT / "configuration.cfg"
    assert settings.batch.endpoint == "https://127.0.0.1:10100"
    assert (settings.batch.account_name, settings.batch.account_key) == ("localbatch", LOCALBATCH_ACCOUNT_KEY)
    assert settings.storage.blob_endpoint == "https://127.0.0.1:10000/devstoreaccount1"
    assert settings.storage.account_key == AZURITE_ACCOUNT_KEY
    assert settings.local.start_local_stack is True
    assert settings.local.data_directory == REPOSITORY_ROOT / ".localstack"
    assert settings.cleanup.delete_job and settings.cleanup.delete_pool and settings.cleanup.delete_container
    assert settings.pool.node_count == 1 and settings.pool.pool_id == ""
    assert settings.timeouts.sas_expiry == timedelta(minutes=60)


def test_the_default_configuration_is_found_from_any_working_directory(tmp_path: Path) -> None:
    code = (
        "from common.config import load_settings, sample_configuration_path;"
        "print(load_settings(None, sample_configuration_path('sample1_helloworld.py'), environ={}).configuration_path)"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)}
    completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment,
                               capture_output=True, text=True, check=True)

    assert completed.stdout.strip() == str(REPOSITORY_ROOT / "configuration.cfg")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.cfg"

    with pytest.raises(ConfigError) as raised:
        load_settings(missing, SAMPLE1_CONFIG, environ=NO_OVERRIDES)

    assert str(raised.value) == f"{missing}: configuration file not found"


def test_a_missing_section_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "configuration.cfg", "[Storage]\naccount_name = a\naccount_key = k\n")

    with pytest.raises(ConfigError) as raised:
        load_settings(path, SAMPLE1_CONFIG, environ=NO_OVERRIDES)

    assert str(raised.value).startswith(f"{path}: section [Batch] is missing")
    assert "BATCHSAMPLES_BATCH_ENDPOINT" in str(raised.value)


def test_a_missing_key_is_named(tmp_path: Path) -> None:
    path = shipped_configuration_with(tmp_path, "account_name = localbatch\n", "")

    with pytest.raises(ConfigError) as raised:
        load_settings(path, SAMPLE1_CONFIG, environ=NO_OVERRIDES)

    assert str(raised.value).startswith(f"{path}: [Batch] account_name: the key is missing")


def test_an_empty_key_is_named(tmp_path: Path) -> None:
    path = shipped_configuration_with(tmp_path, f"account_key = {LOCALBATCH_ACCOUNT_KEY}", "account_key =")

    with pytest.raises(ConfigError) as raised:
        load_settings(path, SAMPLE1_CONFIG, environ=NO_OVERRIDES)

    assert str(raised.value) == f"{path}: [Batch] account_key: the value is empty"


def test_an_empty_value_from_the_environment_names_the_variable() -> None:
    variable = environment_variable_name("Batch", "account_key")

    with pytest.raises(ConfigError) as raised:
        load_settings(None, SAMPLE1_CONFIG, environ={variable: ""})

    assert str(raised.value) == (
        f"{DEFAULT_CONFIGURATION_PATH}: [Batch] account_key (from environment variable {variable}): the value is empty"
    )


def test_a_bad_boolean_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "sample.cfg", SAMPLE2_CONFIG.read_text().replace("delete_pool = true", "delete_pool = maybe"))

    with pytest.raises(ConfigError) as raised:
        load_settings(None, path, environ=NO_OVERRIDES)

    assert str(raised.value) == (
        f"{path}: [Cleanup] delete_pool: expected true or false (or yes/no, on/off, 1/0), got 'maybe'"
    )


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("node_count", "0", "expected a whole number of at least 1, got '0'"),
        ("node_count", "two", "expected a whole number, got 'two'"),
        ("nodes_ready_minutes", "-5", "expected a number greater than 0, got '-5'"),
        ("vm_size", "", "the value is empty"),
    ],
)
def test_bad_numbers_and_empty_sample_values_are_named(key: str, value: str, reason: str) -> None:
    section = "Timeouts" if key.endswith("minutes") else "Pool"
    variable = environment_variable_name(section, key)

    with pytest.raises(ConfigError) as raised:
        load_settings(None, SAMPLE2_CONFIG, environ={variable: value})

    assert str(raised.value) == f"{SAMPLE2_CONFIG}: [{section}] {key} (from environment variable {variable}): {reason}"


def test_a_file_that_is_not_a_configuration_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "configuration.cfg", "endpoint = https://example\n")

    with pytest.raises(ConfigError) as raised:
        load_settings(path, SAMPLE1_CONFIG, environ=NO_OVERRIDES)

    assert str(raised.value).startswith(f"{path}: the file is not a valid configuration file:")


def test_a_url_that_is_not_http_is_named() -> None:
    with pytest.raises(ConfigError, match=r"\[Batch\] endpoint .*expected an http:// or https:// URL, got 'batch.example'"):
        load_settings(None, SAMPLE1_CONFIG, environ={"BATCHSAMPLES_BATCH_ENDPOINT": "batch.example"})


def test_environment_variables_override_any_key() -> None:
    settings = load_settings(None, SAMPLE2_CONFIG, environ={
        "BATCHSAMPLES_BATCH_ENDPOINT": "https://mine.westeurope.batch.azure.com/",
        "BATCHSAMPLES_BATCH_ACCOUNT_NAME": "mine",
        "BATCHSAMPLES_LOCAL_START_LOCAL_STACK": "off",
        "BATCHSAMPLES_STORAGE_BLOB_ENDPOINT": "https://mystorage.blob.core.windows.net",
        "BATCHSAMPLES_CLEANUP_DELETE_POOL": "no",
        "BATCHSAMPLES_POOL_NODE_COUNT": "3",
        "BATCHSAMPLES_TIMEOUTS_TASKS_COMPLETE_MINUTES": "2.5",
    })

    assert settings.batch.endpoint == "https://mine.westeurope.batch.azure.com"
    assert settings.batch.account_name == "mine"
    assert settings.local.start_local_stack is False
    assert settings.cleanup.delete_pool is False and settings.cleanup.delete_job is True
    assert settings.pool.node_count == 3
    assert settings.timeouts.tasks_complete == timedelta(minutes=2.5)


def test_the_local_stack_refuses_endpoints_that_are_not_on_this_machine() -> None:
    with pytest.raises(ConfigError, match=r"\[Batch\] endpoint .*start_local_stack is true"):
        load_settings(None, SAMPLE1_CONFIG, environ={"BATCHSAMPLES_BATCH_ENDPOINT": "https://a.b.batch.azure.com"})


def test_entra_id_needs_no_key_but_an_https_endpoint(tmp_path: Path) -> None:
    azure = {
        "BATCHSAMPLES_LOCAL_START_LOCAL_STACK": "false",
        "BATCHSAMPLES_BATCH_USE_ENTRA_ID": "true",
        "BATCHSAMPLES_BATCH_ACCOUNT_KEY": "",
        "BATCHSAMPLES_BATCH_ENDPOINT": "https://mine.westeurope.batch.azure.com",
        "BATCHSAMPLES_STORAGE_USE_ENTRA_ID": "yes",
        "BATCHSAMPLES_STORAGE_ACCOUNT_NAME": "mystorage",
        "BATCHSAMPLES_STORAGE_ACCOUNT_KEY": "",
        "BATCHSAMPLES_STORAGE_BLOB_ENDPOINT": "",
    }

    with pytest.raises(ConfigError, match="BLOB_ENDPOINT"):  # an empty override is still an error
        load_settings(None, SAMPLE1_CONFIG, environ=azure)
    del azure["BATCHSAMPLES_STORAGE_BLOB_ENDPOINT"]
    path = shipped_configuration_with(tmp_path, "blob_endpoint = https://127.0.0.1:10000/devstoreaccount1\n", "")
    settings = load_settings(path, SAMPLE1_CONFIG, environ=azure)

    assert settings.batch.use_entra_id and settings.batch.account_key == ""
    assert settings.storage.use_entra_id
    assert settings.storage.blob_endpoint == "https://mystorage.blob.core.windows.net"
    with pytest.raises(ConfigError, match=r"\[Batch\] endpoint .*only sent over https"):
        load_settings(path, SAMPLE1_CONFIG, environ={**azure, "BATCHSAMPLES_BATCH_ENDPOINT": "http://batch.example"})


def test_a_connection_string_wins_over_the_other_storage_keys() -> None:
    connection_string = (
        "DefaultEndpointsProtocol=https;AccountName=mystorage;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net"
    )
    settings = load_settings(None, SAMPLE1_CONFIG, environ={
        "BATCHSAMPLES_STORAGE_CONNECTION_STRING": connection_string,
        "BATCHSAMPLES_LOCAL_START_LOCAL_STACK": "false",
    })

    assert settings.storage.account_name == "mystorage"
    assert settings.storage.blob_endpoint == "https://mystorage.blob.core.windows.net"
    assert settings.storage.connection_string == connection_string


def test_printing_the_settings_never_shows_a_secret() -> None:
    settings = load_settings(None, SAMPLE1_CONFIG, environ={
        "BATCHSAMPLES_STORAGE_CONNECTION_STRING":
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_ACCOUNT_KEY};"
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
    })

    for text in (repr(settings), str(settings), settings.describe()):
        assert LOCALBATCH_ACCOUNT_KEY not in text
        assert AZURITE_ACCOUNT_KEY not in text
    assert "account localbatch, shared key" in settings.describe()
    assert "connection string" in settings.describe()


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("https://a.blob.core.windows.net/c/b?sv=2024&sig=abc%2Bdef%3D&se=x",
         "https://a.blob.core.windows.net/c/b?sv=2024&sig=REDACTED&se=x"),
        ("AccountName=a;AccountKey=bXlrZXk=;BlobEndpoint=x", "AccountName=a;AccountKey=REDACTED;BlobEndpoint=x"),
        ("Authorization: SharedKey localbatch:c2lnbmF0dXJl", "Authorization: SharedKey localbatch:REDACTED"),
        ("Authorization: Bearer eyJ0eXAi.eyJhdWQi.c2ln", "Authorization: Bearer REDACTED"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact_secrets(text: str, redacted: str) -> None:
    assert redact_secrets(text) == redacted


BATCH_KEY, STORAGE_KEY = environment_variable_name("Batch", "account_key"), environment_variable_name("Storage", "account_key")
CONNECTION_STRING = environment_variable_name("Storage", "connection_string")


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        (BATCH_KEY, "not base64!", "[Batch] account_key (from environment variable BATCHSAMPLES_BATCH_ACCOUNT_KEY): "
         "an account key is base64 text, as the portal shows it; this value (11 characters) is not valid base64"),
        (BATCH_KEY, "abc", "[Batch] account_key (from environment variable BATCHSAMPLES_BATCH_ACCOUNT_KEY): "
         "an account key is base64 text, as the portal shows it; this value (3 characters) is not valid base64"),
        (STORAGE_KEY, "key with spaces==", "[Storage] account_key (from environment variable BATCHSAMPLES_STORAGE_ACCOUNT_KEY): "
         "an account key is base64 text, as the portal shows it; this value (17 characters) is not valid base64"),
        (CONNECTION_STRING, "AccountName=a;AccountKey=not base64!", "[Storage] connection_string (from environment "
         "variable BATCHSAMPLES_STORAGE_CONNECTION_STRING): the connection string's AccountKey is not valid base64 "
         "(copy it again from the portal)"),
        (CONNECTION_STRING, "just some text", "[Storage] connection_string (from environment variable "
         "BATCHSAMPLES_STORAGE_CONNECTION_STRING): the connection string is malformed: expected Name=value pairs "
         "separated by ';' (as the portal shows it)"),
        (CONNECTION_STRING, "AccountName=a;EndpointSuffix=core.windows.net", "[Storage] connection_string (from "
         "environment variable BATCHSAMPLES_STORAGE_CONNECTION_STRING): the connection string has neither AccountKey "
         "nor SharedAccessSignature"),
        (CONNECTION_STRING, "AccountName=a;AccountKey=a2V5;BlobEndpoint=ftp://x", "[Storage] connection_string (from "
         "environment variable BATCHSAMPLES_STORAGE_CONNECTION_STRING): the connection string's blob endpoint is not "
         "an http(s) URL: 'ftp://x'"),
    ],
)
def test_keys_are_decoded_and_connection_strings_checked_before_anything_starts(
    variable: str, value: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(None, SAMPLE1_CONFIG, environ={variable: value})

    assert str(raised.value) == f"{DEFAULT_CONFIGURATION_PATH}: {reason}"
    assert value not in str(raised.value) or "://" in value  # a key is never quoted back


def test_a_connection_string_with_a_valid_key_or_sas_is_accepted() -> None:
    for value in (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_ACCOUNT_KEY};"
                  "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
                  "AccountName=a;SharedAccessSignature=sv=2024&sig=abc;BlobEndpoint=https://a.blob.core.windows.net"):
        settings = load_settings(None, SAMPLE1_CONFIG, environ={CONNECTION_STRING: value,
                                                               environment_variable_name("Local", "start_local_stack"): "false"})
        assert settings.storage.connection_string == value


def test_request_timeouts_come_from_the_configuration() -> None:
    settings = load_settings(None, SAMPLE1_CONFIG, environ={
        environment_variable_name("Batch", "request_timeout_seconds"): "7",
        environment_variable_name("Storage", "request_timeout_seconds"): "9",
    })

    assert (settings.batch.request_timeout_seconds, settings.storage.request_timeout_seconds) == (7.0, 9.0)
