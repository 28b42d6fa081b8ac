"""The deployment files (issue 11, points 4 and 5), checked with what runs on this machine.

There is no Docker engine and no Kubernetes cluster here. What is checked instead:

- ``deploy/k8s`` (and ``deploy/k8s/with-datastores``) rendered by ``kubectl kustomize``
  and every document validated against the Kubernetes schemas (kubernetes-validate,
  which ships them: no network); then how the objects fit together (probes, selectors,
  Services, the Ingress, autoscalers, budgets, security contexts);
- ``deploy/compose.yaml`` against the Compose Specification's JSON schema
  (``tests/schemas/compose-spec.json``, see its README), after compose's own variable
  interpolation; also with ``docker compose config`` where a compose binary exists;
- ``deploy/nginx/nginx.conf`` against nginx's template (no location lost) and ``nginx -t``;
- the Dockerfile's instructions (non-root, layers cached on the pins, no test extras,
  every file it copies let through by ``.dockerignore``);
- every command these files run parses with the real CLI, and every ``OPENPLACE_*``
  variable they set is a setting (``Settings.from_env`` refuses unknown ones);
- the image's entrypoint and commands, run as the containers would run them (the
  ``openplace`` entry point, the manifests' arguments and settings, two persisters)
  against this test's Redis and PostgreSQL, behind nginx with the compose config: the
  probes' paths answer, the image's HEALTHCHECK passes, the page, the API and /ws work
  through nginx, and /metrics is not public.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from harness.servers import PostgresServer, RedisServer, free_port
from websockets.asyncio.client import connect

from openplace import cli
from openplace.app import STATIC_DIR
from openplace.config import ENV_PREFIX, Settings
from openplace.distributed.cluster import TEMPLATE, find_nginx, wait_http

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"
COMPOSE_SCHEMA = Path(__file__).with_name("schemas") / "compose-spec.json"
K8S = "deploy/k8s"
K8S_ALL = "deploy/k8s/with-datastores"
# kubectl here is 1.32; the manifests use nothing newer (kubernetes-validate ships the
# schemas of 1.25 to 1.37).
K8S_VERSION = "1.32.0"
# Paths of the monitoring files, written alongside (issue 11, points 1 and 2).
GRAFANA_DASHBOARD = "deploy/grafana/openplace.json"
PROMETHEUS_CONFIG = "deploy/prometheus/prometheus.yml"
PROMETHEUS_ALERTS = "deploy/prometheus/alerts.yml"
# The values deploy/.env.example asks for, for interpolating the compose file.
COMPOSE_ENV = {
    "OPENPLACE_SECRET": "s3cret",
    "POSTGRES_PASSWORD": "pw",
    "GRAFANA_ADMIN_PASSWORD": "g",
}
ROLES = ("api", "realtime", "persister", "serve", "restore")

Doc = dict[str, Any]


# ---- reading the files -------------------------------------------------------------------


@cache
def _kustomize(path: str) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render deploy/k8s with kustomize")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def kustomize(path: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(_kustomize(path)) if d]


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_]\w*))")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, and $$ for a literal $."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in ("-", ":-"):
            return arg if unset else str(value)
        if op in ("?", ":?"):
            if unset:
                raise KeyError(f"{name}: {arg}")
            return str(value)
        return value or ""

    return _VAR.sub(sub, text)


def compose(env: Mapping[str, str] = COMPOSE_ENV) -> Doc:
    doc = yaml.safe_load(interpolate(COMPOSE.read_text(), env))
    assert isinstance(doc, dict)
    return doc


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), read with BuildKit's own
    parser (the ``dockerfile`` package): what it cannot parse, ``docker build`` cannot."""
    import dockerfile as buildkit

    out = []
    for c in buildkit.parse_file(str(DOCKERFILE)):
        keyword, value = c.cmd.upper(), list(c.value)
        if c.json:
            rest = json.dumps(value)
        elif keyword == "ENV":  # name, value, name, value, ...
            pairs = zip(value[::2], value[1::2], strict=True)
            rest = " ".join(f"{k}={shlex.quote(v)}" for k, v in pairs)
        else:
            rest = " ".join([*c.flags, *value])
        out.append((keyword, rest))
    return out


def last_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (k, _) in enumerate(instructions) if k == "FROM"]
    return instructions[starts[-1] :]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in last_stage(dockerfile()):
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def image_entrypoint() -> tuple[list[str], list[str]]:
    stage = dict(last_stage(dockerfile()))
    entrypoint, cmd = json.loads(stage["ENTRYPOINT"]), json.loads(stage["CMD"])
    assert isinstance(entrypoint, list) and isinstance(cmd, list)
    return entrypoint, cmd


def openplace_containers(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for name, dep in by_kind(docs, "Deployment").items():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            if c["image"].split(":")[0].rsplit("/", 1)[-1] == "openplace":
                yield name, c


def k8s_settings(docs: list[Doc]) -> dict[str, str]:
    """The environment of an openplace pod: the ConfigMap and the Secret it loads."""
    (config,) = [
        d for d in docs if d["kind"] == "ConfigMap" and "openplace" in d["metadata"]["name"]
    ]
    (secret,) = [d for d in docs if d["kind"] == "Secret" and "openplace" in d["metadata"]["name"]]
    env = dict(config["data"])
    env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
    env.update(secret.get("stringData", {}))
    return env


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


# ---- Kubernetes -------------------------------------------------------------------------


@pytest.mark.parametrize("path", [K8S, K8S_ALL])
def test_k8s_renders_and_every_document_matches_the_kubernetes_schemas(path: str) -> None:
    import kubernetes_validate

    docs = kustomize(path)
    assert docs
    for doc in docs:
        # strict: an unknown field (a typo) is an error too
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Ingress", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "ConfigMap", "Secret"} <= kinds  # fmt: skip
    assert ("StatefulSet" in kinds) == (path == K8S_ALL)  # the data stores are optional


def test_kubernetes_validate_catches_a_wrong_manifest() -> None:
    import kubernetes_validate

    (api,) = [
        d for d in kustomize(K8S) if d["kind"] == "Deployment" and d["metadata"]["name"] == "api"
    ]
    broken = json.loads(json.dumps(api))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = json.loads(json.dumps(api))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_k8s_tiers_probes_and_pods() -> None:
    docs = kustomize(K8S)
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {"api", "realtime", "persister"}
    assert deployments["persister"]["spec"]["replicas"] == 2  # active + standby
    for name, c in openplace_containers(docs):
        pod = deployments[name]["spec"]["template"]["spec"]
        assert c["args"] == [name]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        expected_port = 9464 if name == "persister" else 8000
        assert list(ports.values()) == [expected_port], name
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez", name
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["port"] in ports, (name, probe)
        # settings and secrets from the ConfigMap and the Secret, nothing inline
        refs = {next(iter(k for k in e if k.endswith("Ref"))) for e in c["envFrom"]}
        assert refs == {"configMapRef", "secretRef"}
        # inline: only the realtime tier's per-address limit, held by the Ingress instead
        inline = {e["name"]: e["value"] for e in c.get("env", [])}
        assert inline == ({"OPENPLACE_WS_MAX_CONNECTIONS_PER_IP": "100000"}
                          if name == "realtime" else {})  # fmt: skip
        assert {"requests", "limits"} <= set(c["resources"]), name
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), name
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"], name
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), name
    # the image's user is the pods' user
    assert dict(last_stage(dockerfile()))["USER"].split(":")[0] == "10001"


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_k8s_services_budgets_and_autoscalers_find_their_pods() -> None:
    docs = kustomize(K8S_ALL)
    pods = {name: d["spec"]["template"] for name, d in
            {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}.items()}  # fmt: skip

    def selected(selector: Mapping[str, str]) -> list[str]:
        return [n for n, t in pods.items() if _labels_match(selector, t["metadata"]["labels"])]

    for name, svc in by_kind(docs, "Service").items():
        (target,) = selected(svc["spec"]["selector"])
        assert target == name
        names = {p["name"] for c in pods[target]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names, name
    budgets = by_kind(docs, "PodDisruptionBudget")
    assert set(budgets) == {"api", "realtime", "persister"}
    for name, pdb in budgets.items():
        assert selected(pdb["spec"]["selector"]["matchLabels"]) == [name]
        assert pdb["spec"]["maxUnavailable"] == 1
    scalers = by_kind(docs, "HorizontalPodAutoscaler")
    assert set(scalers) == {"api", "realtime"}  # the persister is one active, never scaled
    deployments = by_kind(docs, "Deployment")
    for name, hpa in scalers.items():
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) == ("Deployment", name) and name in deployments
        assert hpa["spec"]["minReplicas"] >= 2
        # CPU needs requests to compute a utilization
        (c,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert "cpu" in c["resources"]["requests"]
    # generated names (hash suffixes) are what the pods refer to
    names = {d["metadata"]["name"] for d in docs if d["kind"] in ("ConfigMap", "Secret")}
    for _, c in openplace_containers(docs):
        for e in c["envFrom"]:
            ref = e.get("configMapRef") or e.get("secretRef")
            assert ref["name"] in names


def test_k8s_ingress_routes_api_ws_and_the_page_and_keeps_metrics_private() -> None:
    docs = kustomize(K8S)
    ingresses = by_kind(docs, "Ingress")
    services = by_kind(docs, "Service")
    routes: dict[tuple[str, str], tuple[str, str]] = {}
    for ingress_name, ingress in ingresses.items():
        for rule in ingress["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                backend = p["backend"]["service"]
                assert backend["name"] in services
                ports = {sp["name"] for sp in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in ports
                assert (p["path"], p["pathType"]) not in routes
                routes[(p["path"], p["pathType"])] = (backend["name"], ingress_name)
    assert routes[("/api", "Prefix")][0] == "api"
    assert routes[("/", "Exact")][0] == "api"
    assert routes[("/templates", "Prefix")][0] == "api"  # the template images
    service, ingress_name = routes[("/ws", "Exact")]
    assert service == "realtime"
    # websockets: long-lived connections, a per-address limit at the Ingress
    ws = ingresses[ingress_name]["metadata"]["annotations"]
    assert int(ws["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(ws["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert int(ws["nginx.ingress.kubernetes.io/limit-connections"]) == 64
    assert {n for s, n in routes.values() if s == "realtime"} == {ingress_name}
    # every file of the page is routed to the API tier, which serves it ...
    for f in STATIC_DIR.iterdir():
        assert routes.get((f"/{f.name}", "Exact"), ("",))[0] == "api", f"no route for /{f.name}"
    # ... and nothing else: no catch-all that would publish /metrics, /livez, /readyz
    assert all(kind == "Exact" or path in ("/api", "/templates") for path, kind in routes)


def test_k8s_settings_are_settings_and_name_the_optional_data_stores() -> None:
    docs = kustomize(K8S_ALL)
    env = {**image_env(), **k8s_settings(docs)}
    settings = Settings.from_env(env)  # an OPENPLACE_* that is not a setting raises
    assert settings.distributed and settings.host == "0.0.0.0" and settings.port == 8000
    services = by_kind(docs, "Service")
    assert httpx.URL(env["OPENPLACE_REDIS_URL"]).host in services
    assert httpx.URL(env["OPENPLACE_DATABASE_URL"]).host in services
    # the placeholders say so
    assert "REPLACE-ME" in env["OPENPLACE_SECRET"]
    assert set(k8s_settings(docs)) >= {"OPENPLACE_SECRET", "OPENPLACE_DATABASE_URL"}
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert "OPENPLACE_SECRET" not in config["data"]


# ---- compose ---------------------------------------------------------------------------


def test_compose_matches_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    doc = compose()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(doc)
    # and the schema does catch a mistake
    doc["services"]["api"]["deploy"]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(doc)


@pytest.mark.parametrize(
    "missing", ["OPENPLACE_SECRET", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"]
)
def test_compose_has_no_default_secret(missing: str) -> None:
    env = {k: v for k, v in COMPOSE_ENV.items() if k != missing}
    with pytest.raises(KeyError, match=missing):
        compose(env)
    example = (DEPLOY / ".env.example").read_text()
    assert re.search(rf"^{missing}=$", example, re.M), "deploy/.env.example names it, empty"
    # nor in the image
    assert missing not in image_env()
    assert not any(k == "ARG" and missing in rest for k, rest in dockerfile())


def test_compose_stack() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"redis", "postgres", "persister", "api", "realtime", "nginx",
                             "prometheus", "grafana"}  # fmt: skip
    assert services["persister"]["deploy"]["replicas"] == 2  # active + standby
    for tier in ("api", "realtime"):
        assert int(services[tier]["deploy"]["replicas"]) >= 2
    for name in ("persister", "api", "realtime"):
        s = services[name]
        assert s["build"]["context"] == ".." and s["read_only"] and s["cap_drop"] == ["ALL"]
        for dep in s["depends_on"]:
            assert s["depends_on"][dep]["condition"] == "service_healthy"
            # a health check of its own, or the image's HEALTHCHECK
            assert "healthcheck" in services[dep] or services[dep].get("build"), dep
    assert "persister" in services["api"]["depends_on"]
    assert "persister" in services["realtime"]["depends_on"]
    assert any("postgresql/data" in v for v in services["postgres"]["volumes"])
    # nginx's fixed address is the processes' trusted proxy
    nginx_ip = services["nginx"]["networks"]["openplace"]["ipv4_address"]
    subnet = doc["networks"]["openplace"]["ipam"]["config"][0]["subnet"]
    assert nginx_ip.rsplit(".", 1)[0] == subnet.rsplit(".", 1)[0]
    for name in ("persister", "api", "realtime"):
        assert services[name]["environment"]["OPENPLACE_TRUSTED_PROXIES"] == nginx_ip


def _mounts(service: Doc) -> dict[str, str]:
    """A service's bind mounts: container path -> path from the repository root."""
    out = {}
    for v in service.get("volumes", []):
        source, target = v.split(":")[:2]
        if source.startswith("."):
            out[target] = str((COMPOSE.parent / source).resolve().relative_to(ROOT))
    return out


def test_compose_mounts_nginx_prometheus_and_grafana_files() -> None:
    services = compose()["services"]
    assert _mounts(services["nginx"]) == {"/etc/nginx/nginx.conf": "deploy/nginx/nginx.conf"}
    prometheus = _mounts(services["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    assert prometheus["/etc/prometheus/alerts.yml"] == PROMETHEUS_ALERTS
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana = _mounts(services["grafana"])
    (dashboard,) = [t for t, s in grafana.items() if s == GRAFANA_DASHBOARD]
    # the provisioning loads the mounted folder, with Prometheus as the data source
    configs = compose()["configs"]
    providers = yaml.safe_load(configs["grafana-dashboards"]["content"])["providers"]
    assert providers[0]["options"]["path"] == str(Path(dashboard).parent)
    sources = yaml.safe_load(configs["grafana-datasource"]["content"])["datasources"]
    assert sources[0]["type"] == "prometheus" and sources[0]["url"] == "http://prometheus:9090"
    targets = {c["target"] for c in services["grafana"]["configs"]}
    assert {t.rsplit("/", 2)[-2] for t in targets} == {"datasources", "dashboards"}


def test_compose_monitoring_files_fit_the_stack() -> None:
    """Once the monitoring files exist: the Prometheus config's rule file is the mounted
    alerts file, it scrapes each compose service on its metrics port, and Grafana's
    dashboard takes the provisioned Prometheus data source."""
    config_path = ROOT / PROMETHEUS_CONFIG
    if not config_path.exists():
        pytest.skip(f"{PROMETHEUS_CONFIG} is not written yet; the compose file mounts it")
    config = yaml.safe_load(config_path.read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert (ROOT / PROMETHEUS_ALERTS).exists()
    scraped: dict[str, set[str]] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            scraped.setdefault(job["job_name"], set()).update(
                f"{n}:{sd['port']}" for n in sd["names"]
            )
        for sc in job.get("static_configs", []):
            scraped.setdefault(job["job_name"], set()).update(sc["targets"])
    services = compose()["services"]
    for service, port in (("api", 8000), ("realtime", 8000), ("persister", 9464)):
        assert scraped.get(service) == {f"{service}:{port}"}, (service, scraped)
        assert service in services
    dashboard = json.loads((ROOT / GRAFANA_DASHBOARD).read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    # a data source variable of type prometheus picks the provisioned default
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables.values())


def test_compose_config_with_a_compose_binary(tmp_path: Path) -> None:
    """``docker compose config``: compose's own loading and checks, where it is installed
    (no engine needed). This machine has none unless installed by hand."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if (
            shutil.which(cmd[0])
            and subprocess.run([*cmd, "version"], capture_output=True).returncode == 0
        ):
            break
    else:
        pytest.skip("no Docker Compose binary (docker compose / docker-compose) here")
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in COMPOSE_ENV.items()))
    out = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "--env-file", str(env_file), "config", "--quiet"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


# ---- nginx ----------------------------------------------------------------------------


def _locations(text: str) -> set[str]:
    return {m.strip() for m in re.findall(r"^\s*location\s+([^{]+?)\s*\{", text, re.M)}


def test_compose_nginx_keeps_every_location_of_the_template() -> None:
    ours, template = NGINX_CONF.read_text(), TEMPLATE.read_text()
    assert _locations(template) <= _locations(ours)
    # the same limits and error answers
    for directive in re.findall(r"^\s*((?:limit_\w+|error_page|client_\w+|keepalive_timeout|"
                                r"send_timeout|large_client_header_buffers)\s[^;]*);", template,
                                re.M):  # fmt: skip
        if "${" not in directive:  # the template's paths are the cluster's run folder
            assert directive in ours, directive
    assert "${" not in ours


def loopback_nginx_conf(run_dir: Path, listen: int, api: list[int], realtime: list[int]) -> str:
    """deploy/nginx/nginx.conf with the Docker names replaced by loopback ports (and no
    `resolve`, which nginx before 1.27.3 lacks), paths in ``run_dir``."""
    text = NGINX_CONF.read_text()
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"    {k}_temp_path {run_dir}/{k};\n"
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
    text = text.replace("http {\n", "http {\n" + temp, 1)
    text = text.replace("pid /var/run/nginx.pid;", f"pid {run_dir}/nginx.pid;")
    text = text.replace("error_log /dev/stderr warn;", f"error_log {run_dir}/error.log warn;")
    text = text.replace("/var/cache/nginx/", f"{run_dir}/cache-")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    text = re.sub(r"^\s*resolver .*\n", "", text, flags=re.M)
    for name, ports in (("api", api), ("realtime", realtime)):
        servers = " ".join(f"server 127.0.0.1:{p} max_fails=0;" for p in ports)
        text, n = re.subn(rf"server {name}:8000 resolve max_fails=0;", servers, text)
        assert n == 1, name
    return user + text


def test_compose_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    try:
        nginx = find_nginx()
    except RuntimeError as e:
        pytest.skip(str(e))
    conf = tmp_path / "nginx.conf"
    conf.write_text(loopback_nginx_conf(tmp_path, free_port(), [free_port()], [free_port()]))
    out = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path), "-e",
                          str(tmp_path / "error.log")], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr


# ---- the Dockerfile ----------------------------------------------------------------------


def test_dockerfile_slim_non_root_and_cached_on_the_pins() -> None:
    instructions = dockerfile()
    froms = [rest for k, rest in instructions if k == "FROM"]
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text())
    assert base and re.fullmatch(r"python:3\.11-slim(-\w+)?", base.group(1))
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    stage = last_stage(instructions)
    users = [rest for k, rest in stage if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    # the dependencies are installed from pyproject.toml and the pins before the source
    # is copied, so a source change does not reinstall them
    copies = [(i, rest) for i, (k, rest) in enumerate(instructions) if k == "COPY"]
    src = next(i for i, rest in copies if rest.startswith("src "))
    deps = next(i for i, (k, rest) in enumerate(instructions)
                if k == "RUN" and "pip install" in rest and "-r " in rest)  # fmt: skip
    assert deps < src
    before = [rest.split()[0] for i, rest in copies if i < deps]
    assert before == ["pyproject.toml", "requirements/constraints.txt"]
    pip = [rest for k, rest in instructions if k == "RUN" and "pip install" in rest]
    assert all("-c requirements/constraints.txt" in r for r in pip)
    assert not any(re.search(r"\[(test|bench|dev)", r) for r in pip)
    healthcheck = json.loads(dict(stage)["HEALTHCHECK"])
    assert healthcheck[0] == "CMD" and healthcheck[-1].endswith("/healthcheck.py")


def test_dockerignore_lets_through_what_the_dockerfile_copies() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]  # fmt: skip
    assert rules[0] == "*"  # everything else stays out: .git, .venv, tests, artifacts...
    allowed = [r[1:].rstrip("/") for r in rules if r.startswith("!")]
    for keyword, rest in dockerfile():
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert any(source.rstrip("/") == a or source.startswith(a + "/")
                           for a in allowed), source  # fmt: skip
                assert (ROOT / source).exists(), source


# ---- commands and settings ---------------------------------------------------------------


def _commands() -> list[tuple[str, list[str]]]:
    """Every openplace command line these files run, after the image's entry point."""
    entrypoint, cmd = image_entrypoint()
    assert entrypoint == ["openplace"]
    out = [("Dockerfile CMD", cmd)]
    for name, s in compose()["services"].items():
        if s.get("build"):
            command = s.get("command", cmd)
            assert isinstance(command, list)
            out.append((f"compose {name}", command))
    for path in (K8S, K8S_ALL):
        for name, c in openplace_containers(kustomize(path)):
            assert "command" not in c  # the image's entry point
            out.append((f"{path} {name}", c["args"]))
    # the roles the docs name
    out += [(f"role {r}", [r]) for r in ROLES]
    return out


def test_every_command_parses_with_the_real_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert shutil.which("openplace", path=str(Path(sys.executable).parent))
    seen = set()
    for where, argv in _commands():
        seen.add(argv[0])
        with pytest.raises(SystemExit) as exit_:
            cli.main([*argv, "--help"])
        assert exit_.value.code == 0, (where, argv, capsys.readouterr().err)
    assert seen == set(ROLES)


def test_every_openplace_variable_is_a_setting() -> None:
    image = image_env()
    assert image["OPENPLACE_HOST"] == "0.0.0.0"  # containers are reached from outside
    for name, s in compose()["services"].items():
        if s.get("build"):
            env = {**image, **{k: str(v) for k, v in s["environment"].items()}}
            settings = Settings.from_env(env)
            assert settings.distributed and settings.host == "0.0.0.0", name
    example = {
        k: "1"
        for k in re.findall(r"^#?\s*(OPENPLACE_\w+)=", (DEPLOY / ".env.example").read_text(), re.M)
    }
    Settings.from_env({**example, "OPENPLACE_COOLDOWN_BY": "both", "OPENPLACE_LOG_LEVEL": "INFO"})
    for path in (K8S, K8S_ALL):
        docs = kustomize(path)
        for name, c in openplace_containers(docs):
            inline = {e["name"]: e["value"] for e in c.get("env", [])}
            assert Settings.from_env({**image, **k8s_settings(docs), **inline}).distributed, name
    # from_env does refuse a name that is not a setting
    with pytest.raises(ValueError, match="OPENPLACE_NOT_A_SETTING"):
        Settings.from_env({f"{ENV_PREFIX}NOT_A_SETTING": "1"})


# ---- the image's commands, run -----------------------------------------------------------


class Role:
    """One openplace process, started as its container starts it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n"
                               f"{self.log.read_text()[-3000:]}")  # fmt: skip

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def _probes(docs: list[Doc]) -> dict[str, dict[str, str]]:
    out = {}
    for name, c in openplace_containers(docs):
        out[name] = {p: c[p]["httpGet"]["path"]
                     for p in ("startupProbe", "readinessProbe", "livenessProbe")}  # fmt: skip
    return out


async def test_the_images_commands_run_as_the_manifests_say(
    tmp_path: Path, postgres: PostgresServer, redis_server: RedisServer
) -> None:
    """The entry point (``openplace``) with each role's arguments from deploy/k8s, the
    image's ENV and the manifests' settings; only the Redis and PostgreSQL URLs, the ports
    and the board size are this test's. Two persisters (active + standby), an API and a
    realtime process, nginx with the compose config in front."""
    docs = kustomize(K8S)
    db = await postgres.new_database()
    base = {**image_env(), **k8s_settings(docs)}
    base.pop("PATH")
    base.update(
        OPENPLACE_REDIS_URL=redis_server.url, OPENPLACE_DATABASE_URL=db,
        OPENPLACE_SECRET="test-secret", OPENPLACE_DATA_DIR=str(tmp_path / "data"),
        OPENPLACE_WIDTH="100", OPENPLACE_HEIGHT="80", OPENPLACE_TRUSTED_PROXIES="127.0.0.1",
    )  # fmt: skip
    assert Settings.from_env(base).distributed
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)} | base
    entrypoint = str(Path(sys.executable).parent / image_entrypoint()[0][0])
    metrics_port = "persister_metrics_port" in Settings.__dataclass_fields__
    args = {name: c["args"] for name, c in openplace_containers(docs)}
    inline = {name: {e["name"]: e["value"] for e in c.get("env", [])}
              for name, c in openplace_containers(docs)}  # fmt: skip
    roles: list[Role] = []
    ports: dict[str, int] = {}
    try:
        for i in (1, 2):
            port = free_port()
            extra = {"OPENPLACE_PERSISTER_METRICS_PORT": str(port)} if metrics_port else {}
            roles.append(Role(f"persister{i}", [entrypoint, *args["persister"]],
                              env | inline["persister"] | extra,
                              tmp_path / f"persister{i}.log"))  # fmt: skip
            ports[f"persister{i}"] = port
        for name in ("api", "realtime"):
            ports[name] = free_port()
            role_env = env | inline[name] | {"OPENPLACE_PORT": str(ports[name])}
            roles.append(Role(name, [entrypoint, *args[name]], role_env, tmp_path / f"{name}.log"))

        def alive() -> None:
            for r in roles:
                r.check()

        for name in ("api", "realtime"):
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{ports[name]}/healthz", 60, alive)
        # the probes' paths answer 200 on the ports the manifests name
        probes = _probes(docs)
        for name, port in ports.items():
            role = "persister" if name.startswith("persister") else name
            if role == "persister" and not metrics_port:
                pytest.fail(
                    "the persister has no metrics/health port yet "
                    "(OPENPLACE_PERSISTER_METRICS_PORT): its probes cannot answer"
                )
            for probe, path in probes[role].items():
                url = f"http://127.0.0.1:{port}{path}"
                await asyncio.to_thread(wait_http, url, 30, alive)
                status, _ = await asyncio.to_thread(http_get, url)
                assert status == 200, (name, probe, url)
        # the image's HEALTHCHECK, as Docker runs it in each container
        for name, port in ports.items():
            hc_env = env | (
                {"OPENPLACE_PORT": str(free_port()), "OPENPLACE_PERSISTER_METRICS_PORT": str(port)}
                if name.startswith("persister") else {"OPENPLACE_PORT": str(port)}
            )  # fmt: skip
            out = subprocess.run([sys.executable, str(HEALTHCHECK)], env=hc_env, timeout=30)
            assert out.returncode == 0, name
        dead = env | {"OPENPLACE_PORT": str(free_port()),
                      "OPENPLACE_PERSISTER_METRICS_PORT": str(free_port())}  # fmt: skip
        assert subprocess.run([sys.executable, str(HEALTHCHECK)], env=dead).returncode == 1

        # nginx with the compose config, its upstreams on loopback
        try:
            nginx_bin = find_nginx()
        except RuntimeError as e:
            pytest.skip(f"{e}: the processes ran, nginx's part was not")
        listen = free_port()
        run_dir = tmp_path / "nginx"
        run_dir.mkdir()
        conf = run_dir / "nginx.conf"
        conf.write_text(loopback_nginx_conf(run_dir, listen, [ports["api"]], [ports["realtime"]]))
        nginx = subprocess.Popen([nginx_bin, "-c", str(conf), "-p", str(run_dir), "-e",
                                  str(run_dir / "error.log"), "-g", "daemon off;"])  # fmt: skip
        try:
            url = f"http://127.0.0.1:{listen}"
            await asyncio.to_thread(wait_http, url + "/healthz", 30, alive)
            await _through_nginx(url)
            # the template images, from the API's default folder (<data dir>/templates)
            templates = tmp_path / "data" / "templates"
            templates.mkdir(parents=True)
            (templates / "castle.png").write_bytes(b"\x89PNG\r\n\x1a\n")
            (templates / "notes.txt").write_text("text")
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                image = await client.get("/templates/castle.png")
                assert image.status_code == 200 and image.content == b"\x89PNG\r\n\x1a\n"
                assert image.headers["content-type"] == "image/png"
                assert image.headers["x-cache"] == "MISS"  # nginx's templates cache
                assert (await client.get("/templates/notes.txt")).status_code == 404
        finally:
            nginx.send_signal(signal.SIGTERM)
            nginx.wait(10)
    except BaseException:
        for r in roles:  # what each process said, for the failure's report
            print(f"---- {r.name} ({r.log}):\n{r.log.read_text()[-3000:]}")
        raise
    finally:
        codes = {r.name: r.stop() for r in reversed(roles)}
    # Each stopped cleanly: exit 0, or, for uvicorn (the API), the SIGTERM it re-raises
    # after its graceful shutdown (a container's 143, which orchestrators expect).
    assert all(code in (0, -signal.SIGTERM) for code in codes.values()), codes
    assert codes["persister1"] == codes["persister2"] == codes["realtime"] == 0, codes


async def _through_nginx(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        page = await client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert "default-src 'none'" in page.headers["content-security-policy"]
        for f in STATIC_DIR.iterdir():
            r = await client.get(f"/{f.name}")
            assert r.status_code == 200, f.name
        for private in ("/metrics", "/livez", "/readyz"):
            assert (await client.get(private)).status_code in (403, 404), private
        canvas = (await client.get("/api/canvas")).json()
        assert (canvas["width"], canvas["height"]) == (100, 80)
        board = await client.get("/api/board")
        assert board.status_code == 200
        seq = int(board.headers["x-seq"])
        r = await client.post("/api/session")
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        ws_url = url.replace("http://", "ws://") + f"/ws?since={seq}"
        async with connect(ws_url) as ws:
            r = await client.post("/api/pixel", json={"x": 3, "y": 4, "color": 5},
                                  headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            assert r.status_code == 200, r.text
            placed = r.json()["seq"]
            # the placement reaches the websocket client through nginx: a binary batch
            # frame (type 1, first seq, then 5-byte records: index, colour)
            async with asyncio.timeout(15):
                while True:
                    frame = await ws.recv()
                    if isinstance(frame, bytes):
                        break
        assert frame[0] == 1 and int.from_bytes(frame[1:9], "big") == placed == seq + 1
        assert frame[9:14] == (4 * 100 + 3).to_bytes(4, "big") + bytes([5])
