#!/usr/bin/env python3
"""Renders every deploy/k8s overlay with kustomize and checks the objects against each other and the flags.

Checks: TP topology (--world_size == --tp == pods per group x ranks per pod, GPUs per pod == ranks per pod),
security (issue 20: NetworkPolicies admit the worker plane and collectives only from the group, metrics only from
monitoring, the API from the namespace or a gateway; a coordinator's worker plane is authenticated by mTLS from
a rendered cert-manager Certificate or by the cluster-token Secret, with matching worker credentials; the API
key Secret is wired to --api_key_file),
container ports == --port / --worker_port / --metrics_port, probes on real endpoints (gRPC health on the API
port, /health and /ready on the metrics port), ConfigMap / PVC / Service / ServiceMonitor / PDB references,
the replica layouts (headless gRPC Service; InferencePool against its CRD schema, its endpoint picker wired to
tpserve's metric names, ports and pool, the HTTPRoute to the pool), and (when the npm packages can be had) the
Kubernetes OpenAPI schemas. A self-test breaks rendered objects on
purpose and expects each break to be reported. Exit 0 pass, 1 fail, 77 skip (no renderer / no PyYAML).
"""
import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OVERLAYS = os.path.join(REPO, "deploy", "k8s", "overlays")
HEALTH_PATHS = {"/health", "/ready"}
SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
# What the endpoint picker must read from tpserve's /metrics (docs/METRICS.md; coordinator/metrics.cc).
EPP_METRIC_FLAGS = {"total-queued-requests-metric": "tpserve:num_requests_waiting",
                    "kv-cache-usage-percentage-metric": "tpserve:kv_cache_usage_perc"}

try:
    import yaml
except ImportError:
    print("SKIP: PyYAML is missing (apt-get install python3-yaml)")
    sys.exit(SKIP)


def renderer():
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render(cmd, overlay):
    out = subprocess.run(cmd + [overlay], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError("%s %s failed: %s" % (" ".join(cmd), overlay, out.stderr.strip()))
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def parse_flags(text):
    """--name=value lines of an absl flag file -> {name: value} (last wins, like absl)."""
    flags = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("--"):
            continue
        name, _, value = line[2:].partition("=")
        if "-" in name:
            flags.setdefault("__dashed__", []).append(name)
        flags[name] = value
    return flags


def role_flags(files, role):
    """<role>.flags, then the <role>.*.flags parts in name order, merged as tpserve-launch passes them."""
    if role + ".flags" not in files:
        return {}
    merged = dict(files[role + ".flags"])
    for key in sorted(k for k in files if k.startswith(role + ".") and k != role + ".flags" and k.endswith(".flags")):
        merged.update(files[key])
    return merged


def flag_volume_files(vol, cms):
    """{path under the mount: ("configMap"|"secret", name, key)} for the /etc/tpserve volume; None if it does not
    hold the tpserve-flags ConfigMap."""
    out = {}
    sources = []
    if "configMap" in vol:
        sources = [{"configMap": vol["configMap"]}]
    elif "projected" in vol:
        sources = vol["projected"].get("sources", [])
    has_flags = False
    for src in sources:
        for kind in ("configMap", "secret"):
            if kind not in src:
                continue
            ref = src[kind]
            if kind == "configMap" and ref.get("name") in cms and ref["name"].startswith("tpserve-flags"):
                has_flags = True
            items = ref.get("items")
            if items is None and kind == "configMap" and ref.get("name") in cms:
                items = [{"key": k, "path": k} for k in cms[ref["name"]].get("data", {})]
            for it in items or []:
                out[it["path"]] = (kind, ref.get("name"), it["key"])
    return out if has_flags else None


def pod_templates(objs):
    """(owner, template, pods per group, role) for every workload. role: group | leader | worker."""
    out = []
    for o in objs:
        kind, spec = o["kind"], o.get("spec", {})
        name = "%s/%s" % (kind, o["metadata"]["name"])
        if kind in ("Deployment", "StatefulSet"):
            out.append((name, spec["template"], spec.get("replicas", 1), o))
        elif kind == "LeaderWorkerSet":
            lwt = spec["leaderWorkerTemplate"]
            out.append((name + " leader", lwt["leaderTemplate"], 1, o))
            out.append((name + " worker", lwt.get("workerTemplate", lwt["leaderTemplate"]), lwt["size"] - 1, o))
    return out


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def gpus(container):
    res = container.get("resources", {})
    lim = res.get("limits", {}).get("nvidia.com/gpu")
    req = res.get("requests", {}).get("nvidia.com/gpu")
    return int(lim or 0), int(req or 0)


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", []) if "name" in e}


def check(objs):
    errs = []
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    cms = by_kind.get("ConfigMap", {})
    flag_cms = [c for n, c in cms.items() if n.startswith("tpserve-flags")]
    if len(flag_cms) != 1:
        return ["expected one tpserve-flags ConfigMap, found %d" % len(flag_cms)]
    files = {k: parse_flags(v) for k, v in flag_cms[0].get("data", {}).items()}
    for fname, f in files.items():
        if "__dashed__" in f:
            errs.append("%s: flag files need underscore names (absl reads them verbatim): %s" % (fname, f["__dashed__"]))
    coord = files.get("coordinator.flags", {})
    workerf = files.get("worker.flags", {})

    templates = pod_templates(objs)
    if not templates:
        return errs + ["no workload (Deployment, StatefulSet or LeaderWorkerSet) rendered"]
    ranks = {}          # rank source -> number of ranks it covers
    group_pods = 0
    api_pod_labels = []
    all_pod_labels = []
    for owner, tmpl, count, obj in templates:
        spec = tmpl.get("spec", {})
        labels = tmpl.get("metadata", {}).get("labels", {})
        all_pod_labels.append(labels)
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for v in vols.values():
            if "configMap" in v and v["configMap"]["name"] not in cms:
                errs.append("%s: volume %s refers to ConfigMap %s, which is not rendered" % (owner, v["name"], v["configMap"]["name"]))
            pvc = v.get("persistentVolumeClaim", {}).get("claimName")
            if pvc and pvc not in by_kind.get("PersistentVolumeClaim", {}):
                errs.append("%s: volume %s refers to PVC %s, which is not rendered" % (owner, v["name"], pvc))
        ranks_in_pod = 0
        gpus_in_pod = 0
        for c in spec.get("containers", []):
            args = c.get("args", [])
            role = args[0] if args else None
            if role not in ("serve", "coordinator", "worker"):
                continue
            cname = "%s container %s" % (owner, c["name"])
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            fv = vols.get(mounts.get("/etc/tpserve"), {})
            mounted = flag_volume_files(fv, {flag_cms[0]["metadata"]["name"]: flag_cms[0]})
            if mounted is None:
                errs.append("%s: /etc/tpserve is not the tpserve-flags ConfigMap" % cname)
                mounted = {}
            lim, req = gpus(c)
            if lim != req:
                errs.append("%s: nvidia.com/gpu request %d != limit %d" % (cname, req, lim))
            gpus_in_pod += lim
            flags = role_flags(files, role)
            if not flags:
                errs.append("%s: %s.flags missing from tpserve-flags" % (cname, role))
                continue
            errs += check_credentials(cname, role, c, flags, mounted, role_flags(files, "worker"), by_kind)
            # Workers load the path the coordinator sends them: it must exist in their pod too.
            model = flags.get("model") or coord.get("model", "")
            if not any(model.startswith(p.rstrip("/") + "/") for p in mounts if vols.get(mounts[p], {}).get("persistentVolumeClaim")):
                errs.append("%s: --model=%s is not under a mounted model volume" % (cname, model))
            if role in ("serve", "coordinator"):
                api_pod_labels.append(labels)
                ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                want = {"grpc": flags.get("port", "50051"), "metrics": flags.get("metrics_port", "9090")}
                if role == "coordinator":
                    want["worker"] = flags.get("worker_port", "50052")
                for pname, val in want.items():
                    if str(ports.get(pname)) != str(val):
                        errs.append("%s: containerPort %s=%s but --%s=%s" % (cname, pname, ports.get(pname),
                                    {"grpc": "port", "metrics": "metrics_port", "worker": "worker_port"}[pname], val))
                errs += check_probes(cname, c, ports, flags)
            if role == "serve":
                tp = int(flags.get("tp", "1"))
                ranks_in_pod += tp
                ranks["serve"] = ranks.get("serve", 0) + tp * count
                device = flags.get("device", "cpu")
                want_gpu = tp if device.startswith("cuda") else 0
                if lim != want_gpu:
                    errs.append("%s: nvidia.com/gpu=%d but serve --tp=%d --device=%s needs %d" % (cname, lim, tp, device, want_gpu))
            if role == "worker":
                ranks_in_pod += 1
                env = env_of(c)
                device = workerf.get("device", "cpu")
                if lim != (1 if device.startswith("cuda") else 0):
                    errs.append("%s: one rank per pod on --device=%s needs nvidia.com/gpu=%d, has %d" % (
                        cname, device, 1 if device.startswith("cuda") else 0, lim))
                if obj["kind"] == "LeaderWorkerSet":
                    src = "lws"
                elif env.get("TPSERVE_RANK_FROM_HOSTNAME") == "1":
                    src = "sts offset %s" % env.get("TPSERVE_RANK_OFFSET", "0")
                    errs += check_sts_coordinator(cname, obj, env, by_kind)
                elif "TPSERVE_RANK" in env:
                    src = "rank %s" % env["TPSERVE_RANK"]
                else:
                    errs.append("%s: worker has no rank source (LWS, TPSERVE_RANK_FROM_HOSTNAME or TPSERVE_RANK)" % cname)
                    continue
                ranks.setdefault(src, []).append((owner, count))
        if ranks_in_pod and gpus_in_pod and gpus_in_pod != ranks_in_pod:
            errs.append("%s: %d GPUs per pod for %d ranks per pod" % (owner, gpus_in_pod, ranks_in_pod))
        group_pods += count
    errs += check_topology(ranks, coord, workerf, by_kind)
    errs += check_services(objs, by_kind, templates, api_pod_labels, all_pod_labels)
    errs += check_replica_routing(by_kind, templates, files)
    errs += check_network_policies(templates, by_kind)
    return errs


def schema_errors(schema, value, where):
    """The subset of JSON Schema the CRD schemas in tests/deploy/schemas use."""
    import re
    errs = []
    types = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}
    t = schema.get("type")
    if t and (not isinstance(value, types[t]) or (t == "integer" and isinstance(value, bool))):
        return ["%s: expected %s, got %r" % (where, t, value)]
    if "enum" in schema and value not in schema["enum"]:
        errs.append("%s: %r is not one of %s" % (where, value, schema["enum"]))
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 30):
            errs.append("%s: length %d outside [%s, %s]" % (where, len(value), schema.get("minLength", 0), schema.get("maxLength")))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append("%s: %r does not match %s" % (where, value, schema["pattern"]))
    if isinstance(value, int) and not isinstance(value, bool):
        if value < schema.get("minimum", -(1 << 62)) or value > schema.get("maximum", 1 << 62):
            errs.append("%s: %d outside [%s, %s]" % (where, value, schema.get("minimum"), schema.get("maximum")))
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1 << 30):
            errs.append("%s: %d items outside [%s, %s]" % (where, len(value), schema.get("minItems", 0), schema.get("maxItems")))
        for i, item in enumerate(value):
            errs += schema_errors(schema.get("items", {}), item, "%s[%d]" % (where, i))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errs.append("%s: required field %s missing" % (where, key))
        extra = schema.get("additionalProperties", True)
        for key, v in value.items():
            if key in props:
                errs += schema_errors(props[key], v, "%s.%s" % (where, key))
            elif extra is False:
                errs.append("%s: unknown field %s (the API server would drop it)" % (where, key))
            elif isinstance(extra, dict):
                errs += schema_errors(extra, v, "%s.%s" % (where, key))
    return errs


def container_flags(c):
    """--name=value args of a container -> {name: value}."""
    out = {}
    for a in c.get("args", []):
        if a.startswith("--"):
            name, _, value = a[2:].partition("=")
            out[name] = value
    return out


def check_replica_routing(by_kind, templates, files):
    """Headless gRPC Services and InferencePools (with their endpoint picker and HTTPRoutes)."""
    errs = []
    serve = files.get("serve.flags", {})
    api_templates = [(o, t) for o, t, _, _ in templates
                     if any((c.get("args") or [None])[0] in ("serve", "coordinator") for c in t["spec"]["containers"])]
    for name, svc in by_kind.get("Service", {}).items():
        # A headless Service on the public gRPC port is what round_robin clients resolve: it must list only
        # replicas that are ready (gRPC health SERVING).
        grpc_port = any(p.get("targetPort") == "grpc" or p.get("port") == int(serve.get("port", "50051"))
                        for p in svc["spec"].get("ports", []))
        if svc["spec"].get("clusterIP") != "None" or not grpc_port or not any(
                labels_match(svc["spec"].get("selector"), t.get("metadata", {}).get("labels", {})) for _, t in api_templates):
            continue
        if svc["spec"].get("publishNotReadyAddresses"):
            errs.append("Service/%s: a headless API Service must publish only ready replicas" % name)
    pools = by_kind.get("InferencePool", {})
    if not pools:
        return errs
    with open(os.path.join(SCHEMAS, "inferencepool-v1.json")) as f:
        schema = json.load(f)
    with open(os.path.join(REPO, "docs", "METRICS.md")) as f:
        metrics_doc = f.read()
    for name, pool in pools.items():
        what = "InferencePool/%s" % name
        schema_errs = schema_errors(schema, pool, what)
        errs += schema_errs
        if schema_errs:
            continue
        spec = pool["spec"]
        selected = [(o, t) for o, t, _, _ in templates
                    if labels_match(spec["selector"]["matchLabels"], t.get("metadata", {}).get("labels", {}))]
        if not selected or any((o, t) not in api_templates for o, t in selected):
            errs.append("%s: the selector must pick exactly pods that run a coordinator, picks %s" % (what, [o for o, _ in selected]))
        port = spec["targetPorts"][0]["number"]
        if str(port) != serve.get("http_port"):
            errs.append("%s: targetPorts %d but serve.flags --http_port=%s" % (what, port, serve.get("http_port")))
        for owner, t in selected:
            if port not in [p["containerPort"] for c in t["spec"]["containers"] for p in c.get("ports", [])]:
                errs.append("%s: %s does not expose the pool's target port %d" % (what, owner, port))
        ref = spec["endpointPickerRef"]
        epp_svc = by_kind.get("Service", {}).get(ref["name"])
        if ref.get("kind", "Service") != "Service" or epp_svc is None:
            errs.append("%s: endpointPickerRef %s is not a rendered Service" % (what, ref["name"]))
            continue
        ref_port = ref.get("port", {}).get("number", 9002)
        svc_port = next((p for p in epp_svc["spec"]["ports"] if p["port"] == ref_port), None)
        if svc_port is None:
            errs.append("%s: Service/%s has no port %d" % (what, ref["name"], ref_port))
            continue
        epps = [t for _, t, _, _ in templates if labels_match(epp_svc["spec"]["selector"], t.get("metadata", {}).get("labels", {}))]
        if len(epps) != 1:
            errs.append("%s: Service/%s must select one endpoint picker Deployment, selects %d" % (what, ref["name"], len(epps)))
            continue
        c = epps[0]["spec"]["containers"][0]
        flags = container_flags(c)
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        tgt = svc_port.get("targetPort", ref_port)
        if str(ports.get(tgt, tgt)) != flags.get("grpc-port", "9002"):
            errs.append("%s: picker Service targets %s but the picker listens on --grpc-port=%s" % (what, tgt, flags.get("grpc-port")))
        if flags.get("pool-name") != name:
            errs.append("%s: the picker watches --pool-name=%s" % (what, flags.get("pool-name")))
        for flag, metric in EPP_METRIC_FLAGS.items():
            if flags.get(flag) != metric:
                errs.append("%s: picker --%s=%s, tpserve exports %s" % (what, flag, flags.get(flag), metric))
            if "`%s`" % metric not in metrics_doc:
                errs.append("%s: %s is not a metric in docs/METRICS.md" % (what, metric))
        if flags.get("model-server-metrics-port") != serve.get("metrics_port", "9090"):
            errs.append("%s: picker scrapes port %s, tpserve --metrics_port=%s" % (
                what, flags.get("model-server-metrics-port"), serve.get("metrics_port", "9090")))
        sa = epps[0]["spec"].get("serviceAccountName", "default")
        rules = [r for rb in by_kind.get("RoleBinding", {}).values()
                 if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa for s in rb.get("subjects", []))
                 for r in by_kind.get("Role", {}).get(rb["roleRef"]["name"], {}).get("rules", [])]
        for group, resource in (("inference.networking.k8s.io", "inferencepools"), ("", "pods")):
            if not any(group in r.get("apiGroups", []) and resource in r.get("resources", []) and
                       {"get", "list", "watch"} <= set(r.get("verbs", [])) for r in rules):
                errs.append("%s: the picker's ServiceAccount %s may not watch %s" % (what, sa, resource))
        routed = [r for r in by_kind.get("HTTPRoute", {}).values()
                  for rule in r["spec"].get("rules", []) for b in rule.get("backendRefs", [])
                  if b.get("kind") == "InferencePool" and b.get("name") == name and b.get("group") == "inference.networking.k8s.io"]
        if not routed:
            errs.append("%s: no HTTPRoute sends traffic to it" % what)
    return errs


LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
MTLS_FLAGS = ("cluster_ca", "cluster_cert", "cluster_key")


def check_credentials(cname, role, c, flags, mounted, worker_flags, by_kind):
    """Worker-plane authentication and the API key, wired to Secrets the pod really mounts."""
    errs = []

    def secret_of(flag):
        path = flags.get(flag, "")
        if not path.startswith("/etc/tpserve/"):
            errs.append("%s: --%s=%s is not a file of the /etc/tpserve volume" % (cname, flag, path))
            return None
        src = mounted.get(path[len("/etc/tpserve/"):])
        if not src or src[0] != "secret":
            errs.append("%s: --%s=%s is not projected from a Secret into /etc/tpserve" % (cname, flag, path))
            return None
        return src

    if role in ("serve", "coordinator"):
        if flags.get("api_key_file"):
            secret_of("api_key_file")
        else:
            errs.append("%s: no --api_key_file: the public API takes requests from anyone who reaches it "
                        "(components/api-key)" % cname)
        if flags.get("insecure_worker_plane", "false") not in ("false", "0"):
            errs.append("%s: --insecure_worker_plane in a shipped overlay" % cname)
    if role == "serve":
        if flags.get("worker_host", "0.0.0.0") not in LOOPBACK | {"0.0.0.0"}:
            errs.append("%s: serve's --worker_host=%s takes its worker plane off loopback" % (cname, flags["worker_host"]))
        if any(p.get("name") == "worker" for p in c.get("ports", [])):
            errs.append("%s: serve exposes its worker plane as a container port" % cname)
        return errs
    if role not in ("coordinator", "worker"):
        return errs
    mtls = [f for f in MTLS_FLAGS if flags.get(f)]
    token = bool(flags.get("cluster_token_file"))
    if role == "coordinator" and flags.get("worker_host", "0.0.0.0") in LOOPBACK:
        return errs
    if not token and len(mtls) != 3:
        errs.append("%s: worker plane without authentication: needs --cluster_token_file or all of --cluster_ca, "
                    "--cluster_cert, --cluster_key (components/worker-auth-token or worker-auth-mtls)" % cname)
        return errs
    if token:
        secret_of("cluster_token_file")
        if role == "coordinator" and not worker_flags.get("cluster_token_file"):
            errs.append("%s: the coordinator wants a cluster token but worker.flags has no --cluster_token_file" % cname)
    if len(mtls) == 3:
        secrets = {f: secret_of(f) for f in MTLS_FLAGS}
        if role == "coordinator" and not all(worker_flags.get(f) for f in MTLS_FLAGS):
            errs.append("%s: the coordinator wants mutual TLS but worker.flags lacks %s" % (cname, list(MTLS_FLAGS)))
        for flag, src in secrets.items():
            if src is None:
                continue
            certs = [cert for cert in by_kind.get("Certificate", {}).values() if cert["spec"].get("secretName") == src[1]]
            if not certs:
                errs.append("%s: --%s comes from Secret %s, which no rendered cert-manager Certificate issues" % (cname, flag, src[1]))
                continue
            spec = certs[0]["spec"]
            usages = set(spec.get("usages", []))
            if not {"client auth", "server auth"} <= usages:
                errs.append("Certificate/%s: usages %s lack client auth + server auth" % (certs[0]["metadata"]["name"], sorted(usages)))
            issuer = spec.get("issuerRef", {}).get("name")
            if issuer not in by_kind.get(spec.get("issuerRef", {}).get("kind", "Issuer"), {}):
                errs.append("Certificate/%s: issuer %s is not rendered" % (certs[0]["metadata"]["name"], issuer))
            name = worker_flags.get("cluster_server_name")
            if role == "worker" and name and name not in spec.get("dnsNames", []):
                errs.append("%s: --cluster_server_name=%s is not a dnsName of Certificate/%s" % (cname, name, certs[0]["metadata"]["name"]))
    return errs


def peer_class(peer):
    """What one NetworkPolicy `from` entry admits: group | namespace | metrics-client | monitoring | gateway | other."""
    if set(peer) == {"podSelector"}:
        labels = peer["podSelector"].get("matchLabels", {})
        if peer["podSelector"].get("matchExpressions"):
            return "other"
        if labels.get("app.kubernetes.io/name") == "tpserve":
            return "group"
        if labels.get("tpserve.dev/metrics-client") == "true":
            return "metrics-client"
        return "namespace"
    if set(peer) == {"namespaceSelector"}:
        labels = peer["namespaceSelector"].get("matchLabels", {})
        if peer["namespaceSelector"].get("matchExpressions"):
            return "other"
        if labels == {"kubernetes.io/metadata.name": "monitoring"}:
            return "monitoring"
        if labels.get("tpserve.dev/api-client") == "true":
            return "gateway"
    return "other"


# Who may reach each kind of port. "*" is every port not named below: Gloo and NCCL listen on ephemeral ones.
ALLOWED_PEERS = {
    "worker": {"group"},
    "*": {"group"},
    "metrics": {"group", "monitoring", "metrics-client"},
    "grpc": {"group", "namespace", "gateway"},
    "http": {"group", "namespace", "gateway"},
    "grpc-ext-proc": {"group", "namespace", "gateway"},  # the endpoint picker, called by the Gateway's proxy
}
REQUIRED_PEERS = {"worker": {"group"}, "metrics": {"monitoring"}, "grpc": {"namespace", "gateway"},
                  "grpc-ext-proc": {"gateway"}}


def check_network_policies(templates, by_kind):
    errs = []
    policies = list(by_kind.get("NetworkPolicy", {}).values())
    for owner, t, _, _ in templates:
        labels = t.get("metadata", {}).get("labels", {})
        mine = [p for p in policies if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                and labels_match(p["spec"].get("podSelector", {}).get("matchLabels", {}), labels)
                and not p["spec"].get("podSelector", {}).get("matchExpressions")]
        if not mine:
            errs.append("%s: no NetworkPolicy selects these pods: every port is open to the whole cluster" % owner)
            continue
        port_names = {p.get("name"): p["containerPort"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
        reach = {}  # port kind -> peer classes that reach it
        for pol in mine:
            for rule in pol["spec"].get("ingress", []):
                peers = {peer_class(p) for p in rule.get("from", [])} or {"other"}  # no `from`: everyone
                ports = rule.get("ports")
                kinds = set(ALLOWED_PEERS) if not ports else set()
                for p in ports or []:
                    port = p.get("port")
                    name = port if isinstance(port, str) else next((n for n, v in port_names.items() if v == port), "*")
                    kinds.add(name if name in ALLOWED_PEERS else "*")
                for k in kinds:
                    reach.setdefault(k, set()).update(peers)
        for kind, peers in sorted(reach.items()):
            extra = peers - ALLOWED_PEERS[kind]
            if extra:
                errs.append("%s: NetworkPolicy lets %s reach %s ports (allowed: %s)" % (
                    owner, sorted(extra), kind, sorted(ALLOWED_PEERS[kind])))
        for kind, need in REQUIRED_PEERS.items():
            if kind in port_names and not (reach.get(kind, set()) & need):
                errs.append("%s: NetworkPolicy leaves port %s unreachable for %s" % (owner, kind, sorted(need)))
    return errs


def check_probes(cname, c, ports, flags):
    errs = []
    api, metrics = int(flags.get("port", "50051")), int(flags.get("metrics_port", "9090"))
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(kind)
        if not p:
            errs.append("%s: no %s" % (cname, kind))
            continue
        if "grpc" in p:
            if int(p["grpc"]["port"]) != api:
                errs.append("%s: %s gRPC health on port %s, the API is --port=%d" % (cname, kind, p["grpc"]["port"], api))
        elif "httpGet" in p:
            port = p["httpGet"]["port"]
            port = ports.get(port, -1) if isinstance(port, str) else port
            if int(port) != metrics or p["httpGet"].get("path") not in HEALTH_PATHS:
                errs.append("%s: %s GET %s on port %s is not /health or /ready on --metrics_port=%d" % (
                    cname, kind, p["httpGet"].get("path"), p["httpGet"]["port"], metrics))
        else:
            errs.append("%s: %s is neither gRPC health nor an HTTP health endpoint" % (cname, kind))
    if "grpc" not in c.get("readinessProbe", {}):
        errs.append("%s: readiness must be gRPC health on the API port (SERVING only when all workers are up)" % cname)
    return errs


def check_sts_coordinator(cname, sts, env, by_kind):
    host = env.get("TPSERVE_COORDINATOR_HOST", "")
    leaders = [s for s in by_kind.get("StatefulSet", {}).values()
               if any((c.get("args") or [None])[0] == "coordinator" for c in s["spec"]["template"]["spec"]["containers"])]
    want = ["%s-0.%s" % (s["metadata"]["name"], s["spec"].get("serviceName")) for s in leaders]
    if host not in want:
        return ["%s: TPSERVE_COORDINATOR_HOST=%s is not the leader pod's stable DNS name %s" % (cname, host, want)]
    svc = by_kind.get("Service", {}).get(leaders[0]["spec"].get("serviceName"))
    if not svc or svc["spec"].get("clusterIP") != "None":
        return ["%s: leader StatefulSet serviceName must be a rendered headless Service" % cname]
    return []


def check_topology(ranks, coord, workerf, by_kind):
    errs = []
    if "serve" in ranks:
        return errs  # single-pod layouts: tp checked against GPUs above
    tp = int(coord.get("tp", "1"))
    world = int(workerf.get("world_size", "1"))
    if world != tp:
        errs.append("worker.flags --world_size=%d != coordinator.flags --tp=%d" % (world, tp))
    if "lws" in ranks:
        for lws in by_kind.get("LeaderWorkerSet", {}).values():
            size = lws["spec"]["leaderWorkerTemplate"]["size"]
            if size != tp:
                errs.append("LeaderWorkerSet/%s: size=%d but --tp=%d (one rank per pod)" % (lws["metadata"]["name"], size, tp))
    sts = {k: v for k, v in ranks.items() if k.startswith("sts")}
    if sts:
        covered = []
        for src, owners in sts.items():
            offset = int(src.split()[-1])
            for owner, count in owners:
                covered += list(range(offset, offset + count))
        if sorted(covered) != list(range(tp)):
            errs.append("StatefulSet ranks %s do not cover 0..%d exactly once (--tp=%d)" % (sorted(covered), tp - 1, tp))
    return errs


def check_services(objs, by_kind, templates, api_pod_labels, all_pod_labels):
    errs = []
    for name, svc in by_kind.get("Service", {}).items():
        sel = svc["spec"].get("selector", {})
        pods = [t for t in templates if labels_match(sel, t[1].get("metadata", {}).get("labels", {}))]
        if not pods:
            errs.append("Service/%s selects no pod template" % name)
            continue
        names = set()
        nums = set()
        for _, t, _, _ in pods:
            for c in t["spec"]["containers"]:
                for p in c.get("ports", []):
                    names.add(p.get("name"))
                    nums.add(p["containerPort"])
        for p in svc["spec"].get("ports", []):
            tgt = p.get("targetPort", p["port"])
            if (isinstance(tgt, str) and tgt not in names) or (isinstance(tgt, int) and tgt not in nums):
                errs.append("Service/%s port %s targets %s, which no selected container exposes" % (name, p.get("name"), tgt))
    if "tpserve" in by_kind.get("Service", {}):
        sel = by_kind["Service"]["tpserve"]["spec"]["selector"]
        for owner, t, _, _ in templates:
            has_api = any((c.get("args") or [None])[0] in ("serve", "coordinator") for c in t["spec"]["containers"])
            if labels_match(sel, t.get("metadata", {}).get("labels", {})) != has_api:
                errs.append("Service/tpserve must select exactly the pods that run a coordinator (%s)" % owner)
    for name, sm in by_kind.get("ServiceMonitor", {}).items():
        sel = sm["spec"]["selector"].get("matchLabels", {})
        svcs = [s for s in by_kind.get("Service", {}).values() if labels_match(sel, s["metadata"].get("labels", {}))]
        ports = {p.get("name") for s in svcs for p in s["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            if ep.get("port") not in ports:
                errs.append("ServiceMonitor/%s endpoint port %s is not a port of the Services it selects" % (name, ep.get("port")))
            if ep.get("path", "/metrics") != "/metrics":
                errs.append("ServiceMonitor/%s scrapes %s, tpserve serves /metrics" % (name, ep.get("path")))
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        sel = pdb["spec"]["selector"].get("matchLabels", {})
        if not any(labels_match(sel, l) for l in all_pod_labels):
            errs.append("PodDisruptionBudget/%s selects no pod" % name)
    return errs


def mutations(objs):
    """Broken copies of a rendered overlay, each of which check() must reject: (what, objects)."""
    def first(kind):
        return next((o for o in objs if o["kind"] == kind), None)

    def containers(o):
        if o["kind"] == "LeaderWorkerSet":
            return o["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"]
        return o["spec"]["template"]["spec"]["containers"]

    def tpserve_workload(m, kind):
        return next((o for o in m if o["kind"] == kind and any(
            (c.get("args") or [None])[0] in ("serve", "coordinator", "worker") for c in containers(o))), None)

    out = []
    for kind in ("Deployment", "LeaderWorkerSet", "StatefulSet"):
        if tpserve_workload(objs, kind) is None:
            continue
        m = copy.deepcopy(objs)
        w = tpserve_workload(m, kind)
        api = next((c for c in containers(w) if c.get("ports")), None)
        if api is not None:
            api["ports"][0]["containerPort"] += 1
            out.append(("container port off by one", m))
            m = copy.deepcopy(objs)
            w = tpserve_workload(m, kind)
            api = next(c for c in containers(w) if c.get("ports"))
            api["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": "metrics"}}
            out.append(("readiness on a made-up path", m))
        m = copy.deepcopy(objs)
        w = tpserve_workload(m, kind)
        c = next((c for c in containers(w) if c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")), None)
        if c is None:
            continue  # CPU layouts: neither the GPU count nor --tp is tied to a resource
        c["resources"]["limits"]["nvidia.com/gpu"] = c["resources"]["requests"]["nvidia.com/gpu"] = 7
        out.append(("GPU count != ranks", m))
        m = copy.deepcopy(objs)
        cm = next(o for o in m if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("tpserve-flags"))
        for key in ("serve.flags", "coordinator.flags"):
            if key in cm["data"]:
                cm["data"][key] += "\n--tp=3\n"
        out.append(("--tp changed without the topology", m))
    headless = next((o for o in objs if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None" and
                     any(p.get("targetPort") == "grpc" for p in o["spec"].get("ports", []))), None)
    if headless is not None:
        m = copy.deepcopy(objs)
        next(o for o in m if o["metadata"]["name"] == headless["metadata"]["name"] and o["kind"] == "Service")[
            "spec"]["publishNotReadyAddresses"] = True
        out.append(("headless gRPC Service lists replicas that are not ready", m))
    if first("InferencePool") is not None:
        def broken(what, edit):
            m = copy.deepcopy(objs)
            edit(m)
            out.append((what, m))

        def pool(m):
            return next(o for o in m if o["kind"] == "InferencePool")

        def epp_args(m):
            return next(c for o in m if o["kind"] == "Deployment" for c in containers(o)
                        if any(a.startswith("--pool-name") for a in c.get("args", [])))["args"]

        def replace_arg(m, prefix, value):
            args = epp_args(m)
            args[:] = [value if a.startswith(prefix) else a for a in args]

        broken("picker reads vLLM's queue metric", lambda m: replace_arg(
            m, "--total-queued-requests-metric", "--total-queued-requests-metric=vllm:num_requests_waiting"))
        broken("picker reads no KV metric", lambda m: replace_arg(m, "--kv-cache-usage-percentage-metric", "--v=2"))
        broken("picker scrapes the HTTP port", lambda m: replace_arg(
            m, "--model-server-metrics-port", "--model-server-metrics-port=8000"))
        broken("picker watches another pool", lambda m: replace_arg(m, "--pool-name", "--pool-name=other"))
        broken("pool targets the gRPC port", lambda m: pool(m)["spec"]["targetPorts"][0].update(number=50051))
        broken("pool selects nothing", lambda m: pool(m)["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "nope"}))
        broken("pool field misspelt (CRD schema)", lambda m: pool(m)["spec"].update(
            endpointPickerRef={"name": "tpserve-epp", "portNumber": 9002}))
        broken("no HTTPRoute to the pool", lambda m: m.remove(next(o for o in m if o["kind"] == "HTTPRoute")))
    # Security: each of these opens a door the shipped overlays keep shut.
    if any(o["kind"] == "NetworkPolicy" for o in objs):
        m = [o for o in copy.deepcopy(objs) if o["kind"] != "NetworkPolicy"]
        out.append(("no NetworkPolicy", m))
        m = copy.deepcopy(objs)
        for o in m:
            if o["kind"] == "NetworkPolicy":
                for rule in o["spec"].get("ingress", []):
                    rule.pop("from", None)
        out.append(("NetworkPolicy rules open to every source", m))
        m = copy.deepcopy(objs)
        for o in m:
            if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "tpserve-metrics":
                o["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})
        out.append(("metrics open to every namespace", m))
    m = copy.deepcopy(objs)
    cm = next(o for o in m if o["kind"] == "ConfigMap")
    dropped = [k for k in cm["data"] if ".worker-auth." in k or ".api-key." in k]
    if dropped:
        for k in dropped:
            del cm["data"][k]
        out.append(("credential flag files dropped", m))
    return out


def validate_schemas(objs, validator_dir, install):
    node = shutil.which("node")
    if not node:
        return None, "node is missing"
    nm = os.path.join(validator_dir, "node_modules")
    packages = ["kubernetes-models@5.1.0", "@kubernetes-models/prometheus-operator@6.0.0",
                "@kubernetes-models/gateway-api@2.0.0", "@kubernetes-models/cert-manager@6.0.0"]
    names = [p.rsplit("@", 1)[0] for p in packages]
    missing = [n for n in names if not os.path.isdir(os.path.join(nm, n))]
    if missing and install and shutil.which("npm"):
        os.makedirs(validator_dir, exist_ok=True)
        try:
            subprocess.run(["npm", "install", "--prefix", validator_dir, "--no-audit", "--no-fund", "--silent"] + packages,
                           capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            pass
    if not all(os.path.isdir(os.path.join(nm, n)) for n in names):
        return None, "npm packages %s could not be installed into %s" % (", ".join(names), validator_dir)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "validate_schemas.mjs")
    out = subprocess.run([node, script, nm], input=json.dumps(objs), capture_output=True, text=True, timeout=120)
    return out.returncode == 0, (out.stdout + out.stderr).strip()


def token_variant(overlay, dest):
    """A copy of an overlay that uses worker-auth-mtls with worker-auth-token instead (the documented swap for
    clusters without cert-manager), its references pointing back at the repository; None for other overlays."""
    kfile = os.path.join(overlay, "kustomization.yaml")
    text = open(kfile).read()
    if "components/worker-auth-mtls" not in text:
        return None
    shutil.copytree(overlay, dest)
    doc = yaml.safe_load(text)
    # kustomize takes no absolute paths: point from the copy back to the repository.
    absolute = lambda ref: os.path.relpath(os.path.join(overlay, ref), dest) if ref.startswith("..") else ref
    doc["resources"] = [absolute(r) for r in doc.get("resources", [])]
    doc["components"] = [absolute(c).replace("worker-auth-mtls", "worker-auth-token") for c in doc.get("components", [])]
    with open(os.path.join(dest, "kustomization.yaml"), "w") as f:
        yaml.safe_dump(doc, f)
    return dest


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--validator-dir", default=os.path.join(REPO, "build", "deploy-validator"),
                    help="where the npm schema packages live (installed there if missing)")
    ap.add_argument("--no-install", action="store_true", help="do not npm install the schema packages")
    args = ap.parse_args()
    cmd = renderer()
    if cmd is None:
        print("SKIP: neither kubectl (kubectl kustomize) nor kustomize is installed")
        return SKIP
    failed = 0
    schema_notes = []
    overlays = sorted(d for d in os.listdir(OVERLAYS) if os.path.isdir(os.path.join(OVERLAYS, d)))
    tmp = tempfile.mkdtemp(prefix="tpserve-overlays-")
    targets = [(name, os.path.join(OVERLAYS, name)) for name in overlays]
    for name in overlays:
        variant = token_variant(os.path.join(OVERLAYS, name), os.path.join(tmp, name + "+token"))
        if variant:
            targets.append((name + "+token", variant))
    for name, path in targets:
        try:
            objs = render(cmd, path)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print("FAIL %s: %s" % (name, e))
            failed += 1
            continue
        errs = check(objs)
        for what, broken in mutations(objs):
            if not check(broken):
                errs.append("self-test: a broken copy (%s) passed the checks" % what)
        ok, msg = validate_schemas(objs, args.validator_dir, not args.no_install)
        if ok is None:
            schema_notes.append("%s: schema validation skipped: %s" % (name, msg))
        elif not ok:
            errs.append("schema: " + msg)
        kinds = ", ".join(sorted({o["kind"] for o in objs}))
        if errs:
            failed += 1
            print("FAIL %s (%s)" % (name, kinds))
            for e in errs:
                print("  - " + e)
        else:
            print("ok   %s: %d objects (%s)%s" % (name, len(objs), kinds, "; " + msg.splitlines()[-1] if ok else ""))
    for n in schema_notes:
        print("note: " + n)
    shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (len(targets) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
