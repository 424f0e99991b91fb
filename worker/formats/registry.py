"""The Schema Registry client, checked at start: a registry that cannot be reached or refuses the
credentials stops the command with exit 2 and a message that says what to check."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.config import RegistryConfig
from worker.errors import ConfigError

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

_TIMEOUT_S = 10  # of each request at start, unless -S timeout=... says otherwise


def connect_registry(config: RegistryConfig) -> SchemaRegistryClient:
    from confluent_kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError

    settings = {"timeout": _TIMEOUT_S, "max.retries": 1, **config.client()}
    for key in (
        "timeout",
        "max.retries",
        "retries.wait.ms",
        "retries.max.wait.ms",
        "cache.capacity",
        "cache.latest.ttl.sec",
    ):
        if isinstance(settings.get(key), str):  # -S gives text; the client wants numbers
            try:
                settings[key] = float(settings[key]) if key == "timeout" else int(settings[key])
            except ValueError:
                raise ConfigError(f"-S {key}={settings[key]!r}: expected a number") from None
    try:
        client = SchemaRegistryClient(settings)
    except (ValueError, TypeError) as exc:  # unknown keys, a bad URL, a bad value
        raise ConfigError(f"the Schema Registry settings are not accepted: {exc}; see docs/configuration.md") from exc
    where = f"the schema registry at {config.url}"
    try:
        client.get_subjects()
    except SchemaRegistryError as exc:
        if exc.http_status_code in (401, 403):
            raise ConfigError(
                f"{where} refused the credentials (HTTP {exc.http_status_code}): check -S basic.auth.user.info "
                "(LSTM_WORKER_REGISTRY_BASIC_AUTH_USER_INFO) or the bearer settings"
            ) from exc
        raise ConfigError(
            f"{where} answered {exc}: check --schema-registry-url (the Confluent API's base URL, "
            "for Apicurio .../apis/ccompat/v7)"
        ) from exc
    except Exception as exc:  # the HTTP client's transport errors: refused, unresolvable, timed out, TLS
        raise ConfigError(
            f"{where} cannot be reached ({type(exc).__name__}: {exc}): check --schema-registry-url, that the "
            "registry runs, and -S ssl.* for TLS"
        ) from exc
    return client
