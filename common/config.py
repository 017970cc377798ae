"""Load ``configuration.cfg`` and a sample's own ``.cfg`` into typed, validated settings.

Every value can be overridden by an environment variable named
``BATCHSAMPLES_<SECTION>_<KEY>`` in upper case, for example ``BATCHSAMPLES_BATCH_ACCOUNT_KEY``
or ``BATCHSAMPLES_CLEANUP_DELETE_POOL``. A missing or malformed value raises ``ConfigError``
whose message names the file, the section and the key (and the variable, when one was used).

Secrets (account keys, connection strings, SAS signatures) never appear in ``repr()`` of the
settings or in ``describe()``; ``redact_secrets`` scrubs them from any text.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import ipaddress
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Mapping, Optional, TypeVar
from urllib.parse import urlsplit

from common import REPOSITORY_ROOT
from common.redaction import redact_secrets

DEFAULT_CONFIGURATION_PATH = REPOSITORY_ROOT / "configuration.cfg"
SAMPLE_CONFIGURATION_DIRECTORY = REPOSITORY_ROOT / "sample_configs"
ENVIRONMENT_PREFIX = "BATCHSAMPLES_"
DEFAULT_LOCAL_DATA_DIRECTORY = ".localstack"

_T = TypeVar("_T")


class ConfigError(Exception):
    """A configuration file or value is missing or malformed; the message says which and why."""


@dataclass(frozen=True)
class BatchAccountSettings:
    """How to reach the Batch account (``[Batch]`` in configuration.cfg)."""

    endpoint: str
    account_name: str
    use_entra_id: bool
    account_key: str = field(repr=False)
    poll_interval_seconds: float
    request_timeout_seconds: float = 30.0
    """How long one request may take to connect, and then to answer, before the client gives up on it."""


@dataclass(frozen=True)
class StorageAccountSettings:
    """How to reach the Storage account (``[Storage]`` in configuration.cfg).

    ``connection_string``, when set, wins over the other keys. Otherwise ``blob_endpoint``
    defaults to ``https://<account_name>.blob.core.windows.net``.
    """

    account_name: str
    use_entra_id: bool
    account_key: str = field(repr=False)
    blob_endpoint: str
    connection_string: str = field(repr=False)
    request_timeout_seconds: float = 30.0
    """How long one request may take to connect, and then to answer, before the client gives up on it."""


@dataclass(frozen=True)
class LocalStackSettings:
    """Whether the samples run against the local emulators (``[Local]`` in configuration.cfg)."""

    start_local_stack: bool
    data_directory: Path
    startup_timeout_seconds: float


@dataclass(frozen=True)
class PoolSettings:
    """The pool a sample creates (``[Pool]`` in the sample's configuration)."""

    pool_id: str
    vm_size: str
    node_count: int
    image_publisher: str
    image_offer: str
    image_sku_prefix: str


@dataclass(frozen=True)
class CleanupSettings:
    """What a sample deletes when it ends, even after an error (``[Cleanup]``)."""

    delete_job: bool
    delete_pool: bool
    delete_container: bool


@dataclass(frozen=True)
class TimeoutSettings:
    """How long a sample waits for each thing before giving up (``[Timeouts]``)."""

    nodes_ready: timedelta
    tasks_complete: timedelta
    cleanup: timedelta
    sas_expiry: timedelta


@dataclass(frozen=True)
class AccountSettings:
    """The shared configuration alone (configuration.cfg): the accounts and the local stack."""

    configuration_path: Path
    batch: BatchAccountSettings
    storage: StorageAccountSettings
    local: LocalStackSettings


@dataclass(frozen=True)
class SampleSettings:
    """Everything one sample run needs, from both configuration files."""

    configuration_path: Path
    sample_configuration_path: Path
    batch: BatchAccountSettings
    storage: StorageAccountSettings
    local: LocalStackSettings
    pool: PoolSettings
    cleanup: CleanupSettings
    timeouts: TimeoutSettings

    def describe(self) -> str:
        """Return a printable summary of the settings, with every secret redacted."""
        batch_credential = "Entra ID (DefaultAzureCredential)" if self.batch.use_entra_id else "shared key"
        if self.storage.connection_string:
            storage_credential = "connection string"
        elif self.storage.use_entra_id:
            storage_credential = "Entra ID (DefaultAzureCredential)"
        else:
            storage_credential = "shared key"
        lines = [
            f"configuration: {self.configuration_path}",
            f"sample configuration: {self.sample_configuration_path}",
            f"Batch endpoint: {self.batch.endpoint} (account {self.batch.account_name or '-'}, {batch_credential})",
            f"Storage blob endpoint: {redact_secrets(self.storage.blob_endpoint)} "
            f"(account {self.storage.account_name}, {storage_credential})",
            f"local stack: {'started when needed' if self.local.start_local_stack else 'not used'}",
        ]
        return "\n".join(lines)


def environment_variable_name(section: str, key: str) -> str:
    """Return the name of the environment variable that overrides ``[section] key``."""
    return f"{ENVIRONMENT_PREFIX}{section}_{key}".upper()


def sample_configuration_path(sample_file_name: str) -> Path:
    """Return the default sample configuration for a sample script, e.g. ``sample1_helloworld.py``."""
    return SAMPLE_CONFIGURATION_DIRECTORY / (Path(sample_file_name).stem + ".cfg")


class _ConfigFile:
    """One parsed ``.cfg`` file plus the environment, with typed, validated accessors."""

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.path = path
        self._environ = environ
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        self._parser = configparser.ConfigParser(interpolation=None)
        try:
            with path.open(encoding="utf-8") as stream:
                self._parser.read_file(stream)
        except (configparser.Error, UnicodeDecodeError) as error:
            reason = " ".join(str(error).split())
            raise ConfigError(f"{path}: the file is not a valid configuration file: {reason}") from None

    def _where(self, section: str, key: str, from_environment: bool) -> str:
        where = f"{self.path}: [{section}] {key}"
        if from_environment:
            where += f" (from environment variable {environment_variable_name(section, key)})"
        return where

    def _raw(self, section: str, key: str, default: Optional[str]) -> tuple[Optional[str], bool]:
        """Return (value or None when absent and no default, whether it came from the environment)."""
        variable = environment_variable_name(section, key)
        if variable in self._environ:
            return self._environ[variable].strip(), True
        if self._parser.has_option(section, key):
            return self._parser.get(section, key).strip(), False
        if default is not None:
            return default, False
        if not self._parser.has_section(section):
            raise ConfigError(
                f"{self.path}: section [{section}] is missing (it needs the key '{key}', "
                f"or set {variable})"
            )
        raise ConfigError(f"{self._where(section, key, False)}: the key is missing (or set {variable})")

    def text(self, section: str, key: str, default: Optional[str] = None, allow_empty: bool = False) -> str:
        """Return a string value; empty is an error unless ``allow_empty``."""
        value, from_environment = self._raw(section, key, default)
        assert value is not None
        if not value and not allow_empty:
            raise ConfigError(f"{self._where(section, key, from_environment)}: the value is empty")
        return value

    def boolean(self, section: str, key: str, default: Optional[bool] = None) -> bool:
        """Return a boolean value written as true/false, yes/no, on/off or 1/0."""
        return self._converted(section, key, default, _parse_boolean)

    def integer(self, section: str, key: str, minimum: int, default: Optional[int] = None) -> int:
        """Return a whole number no smaller than ``minimum``."""
        return self._converted(section, key, default, lambda text: _parse_number(text, int, minimum))

    def number(self, section: str, key: str, default: Optional[float] = None) -> float:
        """Return a positive number."""
        return self._converted(section, key, default, lambda text: _parse_number(text, float, None))

    def _converted(self, section: str, key: str, default: Optional[_T], convert: Callable[[str], _T]) -> _T:
        value, from_environment = self._raw(section, key, None if default is None else str(default))
        assert value is not None
        if not value:
            raise ConfigError(f"{self._where(section, key, from_environment)}: the value is empty")
        try:
            return convert(value)
        except ValueError as error:
            raise ConfigError(f"{self._where(section, key, from_environment)}: {error}") from None

    def account_key(self, section: str, key: str, allow_empty: bool = False) -> str:
        """Return an account key: base64 text, as the portal shows it (empty only if ``allow_empty``)."""
        value = self.text(section, key, default="" if allow_empty else None, allow_empty=allow_empty)
        if value:
            reason = _base64_problem(value)
            if reason:
                raise self.fail(section, key, f"an account key is base64 text, as the portal shows it; {reason}")
        return value

    def url(self, section: str, key: str, default: Optional[str] = None) -> str:
        """Return an http(s) URL without a trailing slash."""
        value = self.text(section, key, default)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{self._where(section, key, environment_variable_name(section, key) in self._environ)}: "
                f"expected an http:// or https:// URL, got {redact_secrets(value)!r}"
            )
        return value.rstrip("/")

    def fail(self, section: str, key: str, reason: str) -> ConfigError:
        """Return a ConfigError about ``[section] key`` for checks that involve several keys."""
        from_environment = environment_variable_name(section, key) in self._environ
        return ConfigError(f"{self._where(section, key, from_environment)}: {reason}")


def _base64_problem(text: str) -> str:
    """Return why ``text`` is not valid base64 (never quoting it: it is a secret), or "" if it is."""
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return f"this value ({len(text)} characters) is not valid base64"
    if not decoded:
        return "this value decodes to nothing"
    return ""


def _connection_string_fields(text: str) -> dict[str, str]:
    """Split ``Name=value;Name=value`` into a dict keyed by lower-case name; raise ValueError if malformed."""
    fields = {}
    for part in text.strip().rstrip(";").split(";"):
        name, separator, value = part.partition("=")
        if not separator or not name.strip():
            raise ValueError("expected Name=value pairs separated by ';' (as the portal shows it)")
        fields[name.strip().lower()] = value.strip()
    return fields


def _parse_boolean(text: str) -> bool:
    states = configparser.ConfigParser.BOOLEAN_STATES
    try:
        return states[text.lower()]
    except KeyError:
        raise ValueError(f"expected true or false (or yes/no, on/off, 1/0), got {text!r}") from None


def _parse_number(text: str, kind: Callable[[str], _T], minimum: Optional[int]) -> _T:
    try:
        value = kind(text)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise ValueError(f"expected {expected}, got {text!r}") from None
    if minimum is not None and value < minimum:  # type: ignore[operator]
        raise ValueError(f"expected a whole number of at least {minimum}, got {text!r}")
    if minimum is None and not value > 0:  # type: ignore[operator]
        raise ValueError(f"expected a number greater than 0, got {text!r}")
    return value


def is_loopback_url(url: str) -> bool:
    """Return True when ``url`` points at this machine (localhost or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _load_batch(config: _ConfigFile) -> BatchAccountSettings:
    endpoint = config.url("Batch", "endpoint")
    use_entra_id = config.boolean("Batch", "use_entra_id", default=False)
    account_name = config.text("Batch", "account_name", default="" if use_entra_id else None,
                               allow_empty=use_entra_id)
    if use_entra_id:
        account_key = config.text("Batch", "account_key", default="", allow_empty=True)
        if urlsplit(endpoint).scheme != "https":
            raise config.fail("Batch", "endpoint",
                              "Entra ID tokens are only sent over https; use an https:// endpoint "
                              "or set use_entra_id = false and give account_key")
    else:
        account_key = config.account_key("Batch", "account_key")
    return BatchAccountSettings(
        endpoint=endpoint,
        account_name=account_name,
        use_entra_id=use_entra_id,
        account_key=account_key,
        poll_interval_seconds=config.number("Batch", "poll_interval_seconds", default=5.0),
        request_timeout_seconds=config.number("Batch", "request_timeout_seconds", default=30.0),
    )


def _load_storage(config: _ConfigFile) -> StorageAccountSettings:
    request_timeout_seconds = config.number("Storage", "request_timeout_seconds", default=30.0)
    connection_string = config.text("Storage", "connection_string", default="", allow_empty=True)
    if connection_string:
        try:
            fields = _connection_string_fields(connection_string)
        except ValueError as error:
            raise config.fail("Storage", "connection_string", f"the connection string is malformed: {error}") from None
        account_name = fields.get("accountname", "")
        blob_endpoint = fields.get("blobendpoint", "")
        account_key = fields.get("accountkey", "")
        if not account_name:
            raise config.fail("Storage", "connection_string", "the connection string has no AccountName")
        if not account_key and not fields.get("sharedaccesssignature"):
            raise config.fail("Storage", "connection_string",
                              "the connection string has neither AccountKey nor SharedAccessSignature")
        if account_key and _base64_problem(account_key):
            raise config.fail("Storage", "connection_string",
                              "the connection string's AccountKey is not valid base64 (copy it again from the portal)")
        if not blob_endpoint:
            suffix = fields.get("endpointsuffix", "core.windows.net")
            protocol = fields.get("defaultendpointsprotocol", "https")
            blob_endpoint = f"{protocol}://{account_name}.blob.{suffix}"
        parts = urlsplit(blob_endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise config.fail("Storage", "connection_string",
                              f"the connection string's blob endpoint is not an http(s) URL: {redact_secrets(blob_endpoint)!r}")
        return StorageAccountSettings(
            account_name=account_name,
            use_entra_id=False,
            account_key=account_key,
            blob_endpoint=blob_endpoint.rstrip("/"),
            connection_string=connection_string,
            request_timeout_seconds=request_timeout_seconds,
        )
    account_name = config.text("Storage", "account_name")
    use_entra_id = config.boolean("Storage", "use_entra_id", default=False)
    account_key = config.account_key("Storage", "account_key", allow_empty=use_entra_id)
    blob_endpoint = config.url("Storage", "blob_endpoint", default=f"https://{account_name}.blob.core.windows.net")
    if use_entra_id and urlsplit(blob_endpoint).scheme != "https":
        raise config.fail("Storage", "blob_endpoint", "Entra ID tokens are only sent over https")
    return StorageAccountSettings(
        account_name=account_name,
        use_entra_id=use_entra_id,
        account_key=account_key,
        blob_endpoint=blob_endpoint,
        connection_string="",
        request_timeout_seconds=request_timeout_seconds,
    )


def _load_local(config: _ConfigFile, batch: BatchAccountSettings, storage: StorageAccountSettings) -> LocalStackSettings:
    start_local_stack = config.boolean("Local", "start_local_stack", default=False)
    data_directory = Path(config.text("Local", "data_directory", default=DEFAULT_LOCAL_DATA_DIRECTORY))
    if not data_directory.is_absolute():
        data_directory = config.path.parent / data_directory
    if start_local_stack:
        for section, key, url in (("Batch", "endpoint", batch.endpoint), ("Storage", "blob_endpoint", storage.blob_endpoint)):
            if not is_loopback_url(url) or urlsplit(url).scheme not in ("http", "https"):
                raise config.fail(section, key,
                                  f"[Local] start_local_stack is true, so this must be an http:// or https:// URL "
                                  f"on 127.0.0.1 or localhost, got {redact_secrets(url)!r}")
            if urlsplit(url).port is None:
                raise config.fail(section, key, "the local stack needs an explicit port in this URL")
    return LocalStackSettings(
        start_local_stack=start_local_stack,
        data_directory=data_directory,
        startup_timeout_seconds=config.number("Local", "startup_timeout_seconds", default=60.0),
    )


def _load_pool(config: _ConfigFile) -> PoolSettings:
    return PoolSettings(
        pool_id=config.text("Pool", "pool_id", default="", allow_empty=True),
        vm_size=config.text("Pool", "vm_size"),
        node_count=config.integer("Pool", "node_count", minimum=1),
        image_publisher=config.text("Pool", "image_publisher", default="canonical"),
        image_offer=config.text("Pool", "image_offer", default="", allow_empty=True),
        image_sku_prefix=config.text("Pool", "image_sku_prefix", default="", allow_empty=True),
    )


def _minutes(config: _ConfigFile, key: str, default: float) -> timedelta:
    return timedelta(minutes=config.number("Timeouts", key, default=default))


def load_account_settings(
    configuration_path: Optional[Path] = None, environ: Optional[Mapping[str, str]] = None
) -> AccountSettings:
    """Load and validate ``configuration.cfg`` alone (for tools that need the accounts but no sample)."""
    environ = os.environ if environ is None else environ
    shared = _ConfigFile(Path(configuration_path or DEFAULT_CONFIGURATION_PATH).resolve(), environ)
    batch = _load_batch(shared)
    storage = _load_storage(shared)
    return AccountSettings(shared.path, batch, storage, _load_local(shared, batch, storage))


def load_settings(
    configuration_path: Optional[Path] = None,
    sample_configuration: Optional[Path] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> SampleSettings:
    """Load and validate both configuration files, applying environment overrides.

    ``configuration_path`` defaults to ``configuration.cfg`` at the repository root, whatever
    the current directory is. ``sample_configuration`` is the sample's own file.
    Raises ``ConfigError`` naming the file, section and key of the first problem found.
    """
    if sample_configuration is None:
        raise ConfigError("no sample configuration file was given")
    environ = os.environ if environ is None else environ
    shared = _ConfigFile(Path(configuration_path or DEFAULT_CONFIGURATION_PATH).resolve(), environ)
    sample = _ConfigFile(Path(sample_configuration).resolve(), environ)
    batch = _load_batch(shared)
    storage = _load_storage(shared)
    return SampleSettings(
        configuration_path=shared.path,
        sample_configuration_path=sample.path,
        batch=batch,
        storage=storage,
        local=_load_local(shared, batch, storage),
        pool=_load_pool(sample),
        cleanup=CleanupSettings(
            delete_job=sample.boolean("Cleanup", "delete_job", default=True),
            delete_pool=sample.boolean("Cleanup", "delete_pool", default=True),
            delete_container=sample.boolean("Cleanup", "delete_container", default=True),
        ),
        timeouts=TimeoutSettings(
            nodes_ready=_minutes(sample, "nodes_ready_minutes", 30),
            tasks_complete=_minutes(sample, "tasks_complete_minutes", 30),
            cleanup=_minutes(sample, "cleanup_minutes", 10),
            sas_expiry=_minutes(sample, "sas_expiry_minutes", 60),
        ),
    )


def open_configuration_file(path: Path, environ: Optional[Mapping[str, str]] = None) -> "_ConfigFile":
    """One ``.cfg`` file with environment overrides and typed, validated accessors (``text``,
    ``boolean``, ``integer``, ``number``, ``url``, ``fail``), for the settings only one sample has."""
    return _ConfigFile(Path(path).resolve(), os.environ if environ is None else environ)
