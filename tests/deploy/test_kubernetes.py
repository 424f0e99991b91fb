"""deploy/kubernetes, checked offline: built-in kinds against the Kubernetes OpenAPI schemas that
kubernetes-validate ships (strict: unknown fields fail), the custom resources (KEDA ScaledObject,
ServiceMonitor, PrometheusRule) against schemas written from their CRDs (tests/deploy/crd_schemas),
and the references between the objects, the worker's CLI and the configuration it builds, its HTTP
endpoints, the in-memory Schema Registry (registry.yaml) and the alerts."""

from __future__ import annotations

import copy
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
from referencing import Registry, Resource

from tests.deploy.support import (
    CCOMPAT_PATH,
    DEPLOY,
    K8S,
    PROMETHEUS,
    SHUTDOWN_EXIT_MARGIN_S,
    check_worker_env,
    load_yaml,
    load_yaml_docs,
    pinned,
    run_config,
)
from worker.config import REGISTRY_ENV_PREFIX, is_secret
from worker.errors import ConfigError
from worker.metrics import HealthServer, Metrics
from worker.options import Format

KUBERNETES_VERSIONS = ("1.29", "1.37")  # oldest and newest validated
SCHEMAS = Path(__file__).parent / "crd_schemas"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.keda.sh_v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com_v1.json",
}


REGISTRY_APP = "lstm-worker-registry"  # app.kubernetes.io/name of the Schema Registry's objects
REGISTRY_URL = "LSTM_WORKER_SCHEMA_REGISTRY_URL"
REGISTRY_USER_INFO = REGISTRY_ENV_PREFIX + "BASIC_AUTH_USER_INFO"


def manifests(registry: bool = False) -> dict[str, dict[str, Any]]:
    """kind -> the one object of that kind, from the files kustomization.yaml lists: the worker's
    objects, or with `registry` those of the Schema Registry (labelled REGISTRY_APP)."""
    objects = {}
    for name in load_yaml(K8S / "kustomization.yaml")["resources"]:
        for doc in load_yaml_docs(K8S / name):
            if (doc["metadata"].get("labels", {}).get("app.kubernetes.io/name") == REGISTRY_APP) != registry:
                continue
            assert doc["kind"] not in objects, f"one {doc['kind']} expected"
            objects[doc["kind"]] = doc
    return objects


def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    common = json.loads((SCHEMAS / "_common.json").read_text())
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    registry = Registry().with_resource(common["$id"], Resource.from_contents(common))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: dict[str, Any]) -> None:
    """Raise on an object its schema refuses."""
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_SCHEMAS:
        crd_validator(*key).validate(obj)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return manifests()


@pytest.fixture(scope="module")
def registry() -> dict[str, dict[str, Any]]:
    return manifests(registry=True)


def container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return k8s["Deployment"]["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


# what a Secret's key holds, for the environment check: the registry's USER:PASSWORD
_SECRET_STAND_INS = {REGISTRY_USER_INFO: "user:password"}


def pod_env(k8s: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The worker's environment: the ConfigMap, then the container's env (values from the pod's
    fields and from Secrets stood in for)."""
    env = dict(k8s["ConfigMap"]["data"])
    for e in container(k8s)["env"]:
        env[e["name"]] = e["value"] if "value" in e else _SECRET_STAND_INS.get(e["name"], "from-field")
    return env


def test_kustomization_lists_every_manifest():
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert "registry.yaml" in listed


@pytest.mark.parametrize("kind", ["ConfigMap", "Job", "Deployment", "Service", "PodDisruptionBudget"])
def test_builtin_objects_validate_against_the_kubernetes_schemas(k8s, kind):
    validate(k8s[kind])


@pytest.mark.parametrize("kind", ["Deployment", "Service"])
def test_registry_objects_validate_against_the_kubernetes_schemas(registry, kind):
    validate(registry[kind])


@pytest.mark.parametrize("kind", ["ScaledObject", "ServiceMonitor", "PrometheusRule"])
def test_custom_resources_validate_against_their_crd_schemas(k8s, kind):
    validate(k8s[kind])


def broken(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy with `value` at the dotted path (None: the key removed); digits index lists."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", "spec.template.spec.containers.0.readinesProbe", {"httpGet": {"path": "/readyz"}}),
        ("Deployment", "spec.template.spec.containers.0.livenessProbe.httpGet.port", [9100]),
        ("Service", "spec.ports.0.port", "nine-thousand"),
        ("PodDisruptionBudget", "spec.maxUnavailable", {"pods": 1}),
        ("ScaledObject", "spec.triggers.0.metadata.lagThreshold", 20000),
        ("ScaledObject", "spec.triggers.0.metadata.offsetResetPolicy", "oldest"),
        ("ConfigMap", "data.LSTM_WORKER_CACHE_KEYS", 100000),
        ("ScaledObject", "spec.scaleTargetRef", None),
        ("ServiceMonitor", "spec.selector", None),
        ("ServiceMonitor", "spec.endpoints.0.interval", "15 seconds"),
        ("PrometheusRule", "spec.groups.0.rules.0.for", "two minutes"),
    ],
)
def test_a_broken_manifest_fails_validation(k8s, kind, path, value):
    with pytest.raises(jsonschema.ValidationError):
        validate(broken(k8s[kind], path, value))


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", "spec.template.spec.containers.0.ports.0.containerPort", "8080"),
        ("Deployment", "spec.template.spec.containers.0.readinessProbe.httpGet.port", None),
        ("Deployment", "spec.selector", None),
        ("Service", "spec.ports.0.targetPort", ["http"]),
    ],
)
def test_a_broken_registry_manifest_fails_validation(registry, kind, path, value):
    with pytest.raises(jsonschema.ValidationError):
        validate(broken(registry[kind], path, value))


def test_worker_environment_names_real_options_with_valid_values(k8s, monkeypatch, tmp_path):
    args = check_worker_env(pod_env(k8s), monkeypatch, container(k8s)["args"])
    assert args.command == "run" and args.metrics_port == container(k8s)["ports"][0]["containerPort"]
    config = run_config(args, tmp_path)
    assert (config.input_format, config.prediction_format) == ("msgpack", "msgpack")
    assert config.registry.url == k8s["ConfigMap"]["data"][REGISTRY_URL]
    assert dict(config.registry.overrides) == {"basic.auth.user.info": "user:password"}


@pytest.mark.parametrize("fmt", get_args(Format))
@pytest.mark.parametrize("name", ["LSTM_WORKER_INPUT_FORMAT", "LSTM_WORKER_OUTPUT_FORMAT"])
def test_switching_a_format_in_the_configmap_needs_nothing_else(k8s, monkeypatch, tmp_path, name, fmt):
    args = check_worker_env(pod_env(k8s) | {name: fmt}, monkeypatch, container(k8s)["args"])
    config = run_config(args, tmp_path)
    assert fmt in (config.input_format, config.prediction_format)


def test_avro_without_the_registry_url_is_refused(k8s, monkeypatch, tmp_path):
    """The check above can fail: the worker's own validation refuses avro with no registry."""
    env = {k: v for k, v in pod_env(k8s).items() if k != REGISTRY_URL} | {"LSTM_WORKER_INPUT_FORMAT": "avro"}
    with pytest.raises(ConfigError, match="Schema Registry"):
        run_config(check_worker_env(env, monkeypatch, container(k8s)["args"]), tmp_path)


def registry_container(registry: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = registry["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def test_registry_url_is_the_registry_services_confluent_api(k8s, registry):
    url = urlsplit(k8s["ConfigMap"]["data"][REGISTRY_URL])
    service = registry["Service"]
    # the short name: kustomize puts the worker and the registry in one namespace
    assert (url.scheme, url.hostname) == ("http", service["metadata"]["name"])
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"]
    assert url.path == CCOMPAT_PATH, "the Confluent API's base URL"
    named = {p["name"]: p["containerPort"] for p in registry_container(registry)["ports"]}
    assert port["targetPort"] in named, "the Service's targetPort names a port of the registry's container"


def test_registry_service_selects_the_registry_and_no_worker_selects_it(k8s, registry):
    registry_pods = registry["Deployment"]["spec"]["template"]["metadata"]["labels"]
    worker_pods = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (
        registry["Service"]["spec"]["selector"],
        registry["Deployment"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= registry_pods.items()
        assert not selector.items() <= worker_pods.items()
    # else the registry would be scraped as a worker, counted by the worker's budget, or scaled
    for kind, selector in [
        ("Deployment", k8s["Deployment"]["spec"]["selector"]["matchLabels"]),
        ("Service", k8s["Service"]["spec"]["selector"]),
        ("PodDisruptionBudget", k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]),
    ]:
        assert not selector.items() <= registry_pods.items(), f"the worker's {kind} selects the registry"


def test_in_memory_registry_runs_one_pod_replaced_not_rolled(registry):
    """Each pod of an in-memory registry holds its own schemas: two at once would hand out ids
    the other does not know."""
    spec = registry["Deployment"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_registry_image_is_pinned_and_probed_on_its_health_endpoints(registry):
    c = registry_container(registry)
    assert pinned(c["image"]) and c["image"].startswith("apicurio/apicurio-registry-mem:2."), c["image"]
    ports = {p["name"] for p in c["ports"]}
    paths = {name: c[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert all(probe["port"] in ports for probe in paths.values())
    assert paths["readinessProbe"]["path"] == "/health/ready"
    assert paths["livenessProbe"]["path"] == paths["startupProbe"]["path"] == "/health/live"


def test_every_image_is_pinned(k8s, registry):
    jobs = k8s["Job"]["spec"]["template"]["spec"]["containers"]
    for c in [container(k8s), registry_container(registry), *jobs]:
        assert pinned(c["image"]), f"{c['name']}: pin a version, got {c['image']!r}"


def test_registry_credentials_come_from_an_optional_secret(k8s):
    (entry,) = [e for e in container(k8s)["env"] if e["name"] == REGISTRY_USER_INFO]
    ref = entry["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"]
    assert ref["optional"] is True, "a registry without authentication needs no Secret"
    # no secret in the ConfigMap, whether a librdkafka or a registry client setting
    settings = [k.lower().replace("_", ".") for k in k8s["ConfigMap"]["data"]]
    assert not [k for k in settings if is_secret(k)], settings


def job_topics(k8s: dict[str, dict[str, Any]]) -> dict[str, tuple[int, str]]:
    job = k8s["Job"]["spec"]["template"]["spec"]["containers"][0]
    partitions = int(next(e["value"] for e in job["env"] if e["name"] == "PARTITIONS"))
    topics = {}
    for line in job["args"][0].splitlines():
        if match := re.search(r'\$create --topic (\S+) --partitions ("\$PARTITIONS"|\d+)(.*)', line):
            count = partitions if "PARTITIONS" in match.group(2) else int(match.group(2))
            topics[match.group(1)] = (count, match.group(3))
    return topics


def test_topics_job_creates_the_workers_topics_co_partitioned(k8s):
    data = k8s["ConfigMap"]["data"]
    topics = job_topics(k8s)
    assert sorted(topics) == sorted(data[f"LSTM_WORKER_{k}_TOPIC"] for k in ("INPUT", "STATE", "OUTPUT", "DLQ"))
    assert len({count for count, _ in topics.values()}) == 1
    assert "cleanup.policy=compact" in topics[data["LSTM_WORKER_STATE_TOPIC"]][1]


def test_keda_scales_on_the_groups_lag_up_to_the_partition_count(k8s):
    spec, data = k8s["ScaledObject"]["spec"], k8s["ConfigMap"]["data"]
    assert spec["scaleTargetRef"]["name"] == k8s["Deployment"]["metadata"]["name"]
    partitions = job_topics(k8s)[data["LSTM_WORKER_INPUT_TOPIC"]][0]
    assert spec["maxReplicaCount"] == partitions, "a member beyond the partition count would idle"
    assert 1 <= spec["minReplicaCount"] <= k8s["Deployment"]["spec"]["replicas"] <= partitions
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == data["LSTM_WORKER_GROUP_ID"]
    assert trigger["metadata"]["topic"] == data["LSTM_WORKER_INPUT_TOPIC"]
    assert trigger["metadata"]["bootstrapServers"] == data["LSTM_WORKER_BOOTSTRAP_SERVERS"]


def test_selectors_and_ports_connect(k8s):
    pod_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind, selector in [
        ("Deployment", k8s["Deployment"]["spec"]["selector"]["matchLabels"]),
        ("Service", k8s["Service"]["spec"]["selector"]),
        ("PodDisruptionBudget", k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]),
    ]:
        assert selector.items() <= pod_labels.items(), f"{kind} selects no worker pod"
    service_labels = k8s["Service"]["metadata"]["labels"]
    assert k8s["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    port_names = {p["name"] for p in container(k8s)["ports"]}
    (service_port,) = k8s["Service"]["spec"]["ports"]
    assert service_port["targetPort"] in port_names
    assert [e["port"] for e in k8s["ServiceMonitor"]["spec"]["endpoints"]] == [service_port["name"]]
    # alerts.yml selects job="lstm-worker": the operator names the job after the Service
    assert k8s["Service"]["metadata"]["name"] == "lstm-worker"
    assert "jobLabel" not in k8s["ServiceMonitor"]["spec"]


def probes(k8s: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: container(k8s)[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}


def test_probes_use_the_metrics_port(k8s):
    ports = {p["name"]: p["containerPort"] for p in container(k8s)["ports"]}
    for name, probe in probes(k8s).items():
        assert ports[probe["port"]] == int(k8s["ConfigMap"]["data"]["LSTM_WORKER_METRICS_PORT"]), name
    assert probes(k8s)["readinessProbe"]["path"] == "/readyz"
    assert probes(k8s)["livenessProbe"]["path"] == "/healthz"


def test_probe_paths_are_real_endpoints_of_the_worker(k8s):
    ready = {"now": False}
    server = HealthServer(Metrics(), lambda: ready["now"], "127.0.0.1", 0)
    server.start()

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return e.code

    try:
        assert status("/no-such-probe") == 404, "an unknown path must not pass for a probe"
        paths = {name: probe["path"] for name, probe in probes(k8s).items()}
        assert status(paths["readinessProbe"]) == 503, "not ready while restoring"
        ready["now"] = True
        for name, path in paths.items():
            assert status(path) == 200, name
    finally:
        server.stop()


def test_the_workers_shutdown_bound_ends_before_the_kubelets_sigkill(k8s, monkeypatch):
    """The worker's own deadline (exit 75, with a log line that says why) must come first: a
    SIGKILL at terminationGracePeriodSeconds says nothing."""
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    timeout_s = check_worker_env(pod_env(k8s), monkeypatch, container(k8s)["args"]).shutdown_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= timeout_s + SHUTDOWN_EXIT_MARGIN_S


def quantity(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(value)).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


def test_resources_are_set_and_consistent(k8s):
    resources = container(k8s)["resources"]
    for name in ("cpu", "memory"):
        assert quantity(resources["requests"][name]) <= quantity(resources["limits"][name])
    assert quantity(resources["requests"]["cpu"]) >= 1, "the model step needs one core per process"


def test_pod_runs_as_the_images_non_root_user(k8s):
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    user = re.search(r"^USER (\d+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert user and pod["securityContext"]["runAsUser"] == int(user.group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container(k8s)["securityContext"]["allowPrivilegeEscalation"] is False
    # a read-only root needs a writable HOME for Keras' config directory
    mounts = {m["mountPath"] for m in container(k8s)["volumeMounts"]}
    home = next(e["value"] for e in container(k8s)["env"] if e["name"] == "HOME")
    assert container(k8s)["securityContext"]["readOnlyRootFilesystem"] is True and home in mounts


def test_prometheus_rule_carries_the_same_alerts_as_deploy_prometheus(k8s):
    assert k8s["PrometheusRule"]["spec"] == load_yaml(PROMETHEUS / "alerts.yml"), "run `make rules`"
