#!/usr/bin/env python3
"""What the schemas cannot say about the rendered Kubernetes manifests and the alert rules.

kubernetes-validate checks every object against the Kubernetes schemas; the custom resources
(KEDA's ScaledObject and TriggerAuthentication, the Prometheus Operator's ServiceMonitor) have
no schema there and are checked here instead, field by field, together with the conventions of
this project that a valid manifest could still break.

    check_manifests.py k8s RENDERED.yaml OVERLAY   # one rendered overlay (dev or prod)
    check_manifests.py runbook RULES.yml RUNBOOK.md  # every runbook_url anchor exists
    check_manifests.py compose COMPOSE.yml PROMETHEUS.yml  # what the compose schema cannot say
    check_manifests.py crds RENDERED.yaml             # custom resources against their CRD schemas

The CRD schemas (deploy/schemas/) are the openAPIV3Schema of KEDA's and the Prometheus
Operator's released CRDs; they are applied strictly, as `kubectl apply --validate=strict` would:
a field the CRD does not define is an error (the API server would drop it silently).

Exits 1 listing every problem found.
"""
import json
import os
import re
import sys

import yaml

SERVICES = ["command-api", "query-api", "admin-api", "outbox-relay", "projector-worker"]
APIS = ["command-api", "query-api"]
SHUTDOWN_GRACE_S = 10  # SHUTDOWN_GRACE_MS in the base ConfigMap


def check_k8s(path, overlay):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    problems = []

    def need(cond, what):
        if not cond:
            problems.append(what)

    configmaps = [c for n, c in by_kind.get("ConfigMap", {}).items() if n.startswith("cqrs-config")]
    need(len(configmaps) == 1, "exactly one cqrs-config ConfigMap")
    partitions = int(configmaps[0]["data"]["STREAM_PARTITIONS"]) if configmaps else 0
    grace = int(configmaps[0]["data"].get("SHUTDOWN_GRACE_MS", "10000")) / 1000 if configmaps else SHUTDOWN_GRACE_S

    for name in SERVICES:
        dep = by_kind.get("Deployment", {}).get(name)
        need(dep is not None, f"Deployment {name}")
        if dep is None:
            continue
        meta = dep["metadata"]["labels"]
        for label in ["app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/instance",
                      "app.kubernetes.io/component", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"]:
            need(label in meta, f"{name}: label {label}")
        spec = dep["spec"]
        need(spec["strategy"]["type"] == "RollingUpdate"
             and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, f"{name}: RollingUpdate maxUnavailable 0")
        pod = spec["template"]["spec"]
        need(pod["terminationGracePeriodSeconds"] > grace + 5, f"{name}: terminationGracePeriodSeconds above SHUTDOWN_GRACE_MS + preStop")
        psc = pod.get("securityContext", {})
        need(psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
             f"{name}: pod runAsNonRoot + seccompProfile RuntimeDefault")
        (c,) = pod["containers"]
        sc = c.get("securityContext", {})
        need(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
             and sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: read-only, no escalation, drop ALL")
        need(c["resources"]["requests"].get("memory") and c["resources"]["limits"].get("memory")
             and c["resources"]["requests"].get("cpu"), f"{name}: requests and a memory limit")
        need(c.get("startupProbe") is not None, f"{name}: startupProbe")
        need(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", f"{name}: readiness on /readyz")
        need(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", f"{name}: liveness on /healthz")
        need("preStop" in c.get("lifecycle", {}), f"{name}: preStop")
        need(c["ports"][0]["name"] == "http", f"{name}: container port named http")
        refs = [list(e.keys())[0] + ":" + list(e.values())[0]["name"] for e in c.get("envFrom", [])]
        need(any(r.startswith("configMapRef:cqrs-config") for r in refs) and "secretRef:cqrs-secrets" in refs,
             f"{name}: envFrom cqrs-config and cqrs-secrets")
        env = {e["name"]: e for e in c.get("env", [])}
        need("STREAM_PARTITIONS" not in env, f"{name}: STREAM_PARTITIONS only in the ConfigMap")
        if name == "projector-worker":
            need(env.get("CONSUMER_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
                 f"{name}: CONSUMER_NAME from the pod name")
        svc = by_kind.get("Service", {}).get(name)
        need(svc is not None and svc["spec"]["ports"][0]["name"] == "http", f"Service {name} with a port named http")
        need(name in by_kind.get("PodDisruptionBudget", {}), f"PodDisruptionBudget {name}")

    for name in APIS:
        hpa = by_kind.get("HorizontalPodAutoscaler", {}).get(name)
        need(hpa is not None and hpa["apiVersion"] == "autoscaling/v2", f"HPA autoscaling/v2 for {name}")

    job = by_kind.get("Job", {}).get("cqrs-migrate")
    need(job is not None and job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "migrate",
         "migration Job running admin-api migrate")

    sm = by_kind.get("ServiceMonitor", {}).get("cqrs-outbox")
    need(sm is not None and sm["apiVersion"] == "monitoring.coreos.com/v1"
         and sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
         and sm["spec"].get("jobLabel") == "app.kubernetes.io/name", "ServiceMonitor scraping port http /metrics, job = service name")

    policies = by_kind.get("NetworkPolicy", {})
    admin = policies.get("cqrs-admin-api-internal")
    need(admin is not None and admin["spec"]["ingress"][0]["from"] == [{"podSelector": {}}],
         "admin-api reachable only from its namespace")
    deny = policies.get("cqrs-default-deny-ingress")
    need(deny is not None and "ingress" not in deny["spec"], "default deny ingress")

    scaled = by_kind.get("ScaledObject", {}).get("projector-worker")
    if overlay == "prod":
        need(scaled is not None, "prod: KEDA ScaledObject for projector-worker")
        if scaled:
            triggers = scaled["spec"]["triggers"]
            need(all(t["type"] == "redis-streams" and t["metadata"].get("consumerGroup", "").endswith("_projection_group")
                     and "lagCount" in t["metadata"] for t in triggers), "prod: redis-streams triggers in lag mode")
            streams = sorted(t["metadata"]["stream"] for t in triggers)
            expected = sorted(f"cqrs:stream:task:{p}" for p in range(partitions)) if partitions > 1 else ["cqrs:stream:task"]
            need(all(s in streams for s in expected), f"prod: one trigger per task stream partition ({partitions})")
            need(scaled["spec"]["maxReplicaCount"] <= partitions, "prod: at most STREAM_PARTITIONS projector replicas")
            auth = scaled["spec"]["triggers"][0].get("authenticationRef", {}).get("name")
            need(auth in by_kind.get("TriggerAuthentication", {}), "prod: the triggers' TriggerAuthentication")
        need("replicas" not in by_kind["Deployment"]["projector-worker"]["spec"], "prod: KEDA alone sets projector replicas")
    else:
        need(scaled is None, f"{overlay}: no KEDA (fixed replicas)")
        need(by_kind["Deployment"]["projector-worker"]["spec"].get("replicas", 0) >= 1, f"{overlay}: fixed projector replicas")
    return problems


def anchor(heading):
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def check_runbook(rules_path, runbook_path):
    anchors = {anchor(l.lstrip("#")) for l in open(runbook_path) if l.startswith("#")}
    problems = []
    for group in yaml.safe_load(open(rules_path))["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            url = rule.get("annotations", {}).get("runbook_url", "")
            target = url.split("#", 1)[1] if "#" in url else ""
            if not url.startswith("docs/runbook.md#") or target not in anchors:
                problems.append(f"{rule['alert']}: runbook_url {url!r} has no section in {runbook_path}")
            if target != rule["alert"].lower():
                problems.append(f"{rule['alert']}: runbook_url should point at #{rule['alert'].lower()}")
            if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                problems.append(f"{rule['alert']}: severity warning or critical")
    return problems


def check_compose(compose_path, prometheus_path):
    services = yaml.safe_load(open(compose_path))["services"]
    scrape = yaml.safe_load(open(prometheus_path))["scrape_configs"]
    problems = []

    def need(cond, what):
        if not cond:
            problems.append(what)

    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            need(dep in services, f"{name}: depends_on {dep}, which is not a service")
    redis = " ".join(services.get("redis", {}).get("command", []))
    need("--maxmemory-policy noeviction" in redis, "redis runs with maxmemory-policy noeviction")
    migrate = services.get("migrate", {})
    need(migrate.get("command", [])[-1:] == ["migrate"] and migrate.get("restart") == "no", "a one-shot admin-api migrate")
    partitions = set()
    jobs = {c["job_name"]: c["static_configs"][0]["targets"] for c in scrape}
    for name in SERVICES:
        svc = services.get(name)
        need(svc is not None, f"service {name}")
        if svc is None:
            continue
        need(svc.get("healthcheck", {}).get("test", [None])[0] == "CMD", f"{name}: a healthcheck")
        deps = svc.get("depends_on", {})
        need(deps.get("migrate", {}).get("condition") == "service_completed_successfully"
             and deps.get("postgres", {}).get("condition") == "service_healthy"
             and deps.get("redis", {}).get("condition") == "service_healthy",
             f"{name}: waits for the migration and healthy PostgreSQL and Redis")
        env = svc.get("environment", {})
        partitions.add(env.get("STREAM_PARTITIONS"))
        port = env.get("HTTP_ADDR", ":").rsplit(":", 1)[1]
        need(jobs.get(name) == [f"{name}:{port}"], f"prometheus scrapes {name}:{port} as job {name}")
    need(len(partitions) == 1 and None not in partitions, "one STREAM_PARTITIONS for every service")
    volumes = " ".join(services.get("prometheus", {}).get("volumes", []))
    need("./prometheus/rules:" in volumes, "prometheus loads the shipped rules")
    volumes = " ".join(services.get("grafana", {}).get("volumes", []))
    need("./grafana/provisioning:" in volumes and "./grafana/dashboards:" in volumes, "grafana provisioned")
    return problems


CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring-servicemonitor-v1.json",
}


def strict(schema):
    """Objects with declared properties accept no others, unless the CRD keeps unknown fields."""
    if isinstance(schema, dict):
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema = {**schema, "additionalProperties": False}
        return {k: strict(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def check_crds(path):
    import jsonschema  # in the venv, with check-jsonschema

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
    problems = []
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        key = (doc["apiVersion"], doc["kind"])
        if "." not in doc["apiVersion"].split("/")[0] or doc["apiVersion"].split("/")[0].endswith(".k8s.io"):
            continue  # a built-in kind: kubernetes-validate's business
        if key not in CRD_SCHEMAS:
            problems.append(f"{key}: no schema in deploy/schemas for this custom resource")
            continue
        schema = strict(json.load(open(os.path.join(here, CRD_SCHEMAS[key]))))
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
            where = "/".join(str(p) for p in e.absolute_path)
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {e.message}")
    return problems


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "k8s":
        problems = check_k8s(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "crds":
        problems = check_crds(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compose":
        problems = check_compose(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "runbook":
        problems = check_runbook(sys.argv[2], sys.argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
