"""Start-up checks of what the cluster lets this worker do.

Wrong credentials, a failed TLS handshake or a missing ACL stop the worker at start with a
message that says what to fix, instead of a metadata timeout or a failure at the first commit.
librdkafka reports a refused SASL handshake only through `error_cb` (and retries forever), so
the first connection is made by a client that watches for it. ACLs are read back as the
broker's "authorized operations" of each topic and group (KIP-430): no ACL-describe right needed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AclOperation, AdminClient

from worker.config import KafkaConfig
from worker.errors import AccessError, AuthError, ClusterError

log = logging.getLogger(__name__)

ACL_HINT = "the ACLs the worker needs are listed in docs/security.md"
# the state readers' consumers (worker/app.py) carry this group id: assign() only, but librdkafka
# still looks up the group's coordinator, which needs DESCRIBE on it
STATE_READER_SUFFIX = ".state-reader"
_TIMEOUT_S = 30.0
_GROUP_RETRY_S = 10.0
_GROUP_REQUEST_S = 10.0  # one describe of a group; its coordinator may be starting (retried within _GROUP_RETRY_S)
_RETRIABLE_GROUP_ERRORS = (
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
)


def _sasl_message(settings: Mapping[str, object], error: KafkaError) -> str:
    return (
        f"SASL authentication failed for sasl.username={settings.get('sasl.username')!r} "
        f"(sasl.mechanism={settings.get('sasl.mechanism', 'GSSAPI')}) at {settings['bootstrap.servers']}: "
        f"{error.str()}. Check the username and password (-X sasl.username=... -X sasl.password=..., or "
        "LSTM_WORKER_KAFKA_SASL_USERNAME / LSTM_WORKER_KAFKA_SASL_PASSWORD), that the broker's listener enables "
        "this sasl.mechanism, and, for SCRAM, that the user has credentials for that mechanism "
        "(kafka-configs.sh --alter --add-config 'SCRAM-SHA-512=[password=...]' --entity-type users --entity-name NAME)"
    )


def _tls_message(settings: Mapping[str, object], error: KafkaError) -> str:
    return (
        f"TLS handshake with {settings['bootstrap.servers']} failed: {error.str()}. Check security.protocol "
        "(SSL or SASL_SSL), ssl.ca.location (the CA that signed the broker's certificate) and, for mutual TLS, "
        "ssl.certificate.location / ssl.key.location / ssl.key.password"
    )


def connect(kafka: KafkaConfig, timeout_s: float = _TIMEOUT_S) -> AdminClient:
    """An admin client whose cluster has answered; refused credentials raise AuthError at once."""
    problems: list[KafkaError] = []
    settings = kafka.admin()
    watched: dict[str, Any] = {**settings, "error_cb": problems.append}
    admin = AdminClient(watched)
    answered = admin.describe_cluster(request_timeout=timeout_s)
    while not answered.done():
        admin.poll(0.1)  # serves error_cb
        for error in problems:
            if error.code() == KafkaError._AUTHENTICATION:
                raise AuthError(_sasl_message(settings, error))
            if error.code() == KafkaError._SSL:
                raise AuthError(_tls_message(settings, error))
    try:
        answered.result()
    except KafkaException as exc:
        detailed = [e for e in problems if e.code() != KafkaError._ALL_BROKERS_DOWN]
        last = (detailed or problems or [exc.args[0]])[-1].str()
        raise ClusterError(
            f"cannot reach Kafka at {kafka.bootstrap_servers} within {timeout_s:.0f} s (last error: {last}); "
            "check --bootstrap-servers and the -X security settings (security.protocol must match the listener)"
        ) from exc
    return admin


Needs = Mapping[str, tuple[str, tuple[AclOperation, ...]]]  # resource name -> (its role, operations needed)


def _missing(granted: list[AclOperation] | None, needed: Iterable[AclOperation]) -> list[str]:
    if granted is None:  # the broker cannot tell (too old, or the check failed): nothing to refuse
        return []
    have = set(granted)
    return [op.name for op in needed if op not in have and AclOperation.ALL not in have]


def _refuse(kind: str, name: str, role: str, missing: list[str], flag: str) -> None:
    if not missing:
        return
    ops = ", ".join(missing)
    example = " ".join("--operation " + "".join(w.capitalize() for w in op.split("_")) for op in missing)
    raise AccessError(
        f"not authorized to {ops} {kind} {name!r} ({role}): the broker's ACLs do not grant this principal "
        f"{ops} on it. Grant it, e.g. kafka-acls.sh --bootstrap-server ... --add --allow-principal User:NAME "
        f"{example} {flag} {name}; {ACL_HINT}"
    )


def require_topic_operations(admin: AdminClient, needs: Needs) -> None:
    """AccessError naming the first topic and operation the ACLs do not grant."""
    futures = admin.describe_topics(TopicCollection(list(needs)), include_authorized_operations=True)
    for topic, future in futures.items():
        role, operations = needs[topic]
        granted: list[AclOperation] | None
        try:
            granted = future.result(timeout=_TIMEOUT_S).authorized_operations
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_AUTHORIZATION_FAILED:
                log.warning("cannot check the ACLs of topic=%s: %s", topic, exc.args[0].str())
            granted = [] if exc.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED else None
        _refuse("topic", topic, role, _missing(granted, operations), "--topic")


def _group_operations(admin: AdminClient, group: str) -> list[AclOperation] | None:
    """What the ACLs grant on a group, existing or not ([]: not even DESCRIBE; None: cannot tell)."""
    deadline = time.monotonic() + _GROUP_RETRY_S
    while True:
        future = admin.describe_consumer_groups(
            [group], include_authorized_operations=True, request_timeout=_GROUP_REQUEST_S
        )[group]
        try:
            granted: list[AclOperation] | None = future.result(timeout=_TIMEOUT_S).authorized_operations
            return granted
        except TimeoutError:  # no answer at all (a new cluster creating __consumer_offsets): not retried,
            # since a describe still in flight beside a new one can trip librdkafka (#4605)
            log.warning("cannot check the ACLs of consumer group=%s: no answer within %.0f s", group, _TIMEOUT_S)
            return None
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                return []
            if (error.code() in _RETRIABLE_GROUP_ERRORS or error.retriable()) and time.monotonic() < deadline:
                time.sleep(0.2)  # the group coordinator is moving or starting (first group of a new cluster)
                continue
            log.warning("cannot check the ACLs of consumer group=%s: %s", group, error.str())
            return None


def require_group_operations(admin: AdminClient, needs: Needs) -> None:
    """AccessError naming the first consumer group and operation the ACLs do not grant."""
    for group, (role, operations) in needs.items():
        _refuse("consumer group", group, role, _missing(_group_operations(admin, group), operations), "--group")


def check_client_access(kafka: KafkaConfig, group_id: str) -> AdminClient:
    """At start, before the model is loaded: the credentials work and the worker's groups are usable.

    Topics are checked by `ensure_worker_topics` once it has created the missing ones.
    """
    admin = connect(kafka)
    require_group_operations(
        admin,
        {
            group_id: ("the worker's consumer group", (AclOperation.READ,)),
            group_id + STATE_READER_SUFFIX: ("the state readers' group id", (AclOperation.DESCRIBE,)),
        },
    )
    return admin


def authorization_failure(exc: BaseException, group_id: str | None) -> str | None:
    """What to grant, for a client error that is a refused authorization (None: it is not one).

    The transactional id cannot be checked ahead (no API reports its authorized operations), so
    `exactly_once_v2` finds out when it initialises its producer; this turns that into a message.
    """
    if not isinstance(exc, KafkaException) or not isinstance(exc.args[0], KafkaError):
        return None
    error: KafkaError = exc.args[0]
    group = group_id or "<group id>"
    if error.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return (
            f"not authorized to WRITE transactional id {group}.* (--processing-guarantee exactly_once_v2): "
            f"{error.str().rstrip('.')}. Grant it, e.g. kafka-acls.sh --bootstrap-server ... --add --allow-principal "
            f"User:NAME --operation Write --transactional-id {group}. --resource-pattern-type prefixed; {ACL_HINT}"
        )
    if error.code() in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    ):
        return f"not authorized: {error.str()}; {ACL_HINT}"
    return None
