#!/usr/bin/env bash
# Static (and cheap functional) checks of deploy/: everything that can be verified without Docker,
# a Kubernetes cluster or a running systemd. Prints one line per check (PASS / FAIL / SKIP) and
# exits non-zero when any check fails. Run from anywhere; it works from the repository root.
#
# Needs python3 with PyYAML (installed with pip when missing). Uses, when present: kubectl
# (kustomize build), systemd-analyze, shellcheck, flask (stand-in smoke test), and an already
# built target/debug/rbac-gateway (validates the example ConfigMap mapping; never builds).
set -uo pipefail
cd "$(dirname "$0")/.."

failures=0
pass() { printf 'PASS  %s\n' "$1"; }
fail() { printf 'FAIL  %s\n' "$1"; failures=$((failures + 1)); }
skip() { printf 'SKIP  %s\n' "$1"; }

# --------------------------------------------------------------------------- prerequisites
if ! python3 -c 'import yaml' 2>/dev/null; then
  python3 -m pip install --quiet pyyaml >/dev/null 2>&1 || true
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  fail "python3 + PyYAML available (pip install pyyaml failed)"
  exit 1
fi

# --------------------------------------------------------------------------- python checks
# Each check prints its own PASS/FAIL/SKIP line; the exit status is the number of failures.
python3 - <<'PY'
import glob, json, os, re, sys
import yaml

failures = 0
def report(ok, name, detail=""):
    global failures
    if ok:
        print(f"PASS  {name}")
    else:
        failures += 1
        print(f"FAIL  {name}" + (f": {detail}" if detail else ""))

# 1. Every YAML file parses (multi-document aware).
docs = {}
for path in sorted(glob.glob("deploy/**/*.yaml", recursive=True) + glob.glob("deploy/**/*.yml", recursive=True)):
    try:
        with open(path) as f:
            docs[path] = [d for d in yaml.safe_load_all(f) if d is not None]
        report(True, f"yaml parses: {path} ({len(docs[path])} document(s))")
    except yaml.YAMLError as e:
        report(False, f"yaml parses: {path}", str(e).replace("\n", " "))

# 2. Kubernetes objects: apiVersion, kind, metadata.name (kustomization.yaml is not an object).
k8s = {}
for path, ds in docs.items():
    if not path.startswith("deploy/kubernetes/") or os.path.basename(path) == "kustomization.yaml":
        continue
    for i, d in enumerate(ds):
        missing = [k for k in ("apiVersion", "kind") if not isinstance(d, dict) or not d.get(k)]
        if not (isinstance(d, dict) and isinstance(d.get("metadata"), dict) and d["metadata"].get("name")):
            missing.append("metadata.name")
        name = f"{path}#{i}" + (f" {d.get('kind')}/{d.get('metadata', {}).get('name')}" if isinstance(d, dict) else "")
        report(not missing, f"k8s object has apiVersion/kind/metadata.name: {name}", "missing " + ", ".join(missing))
        if not missing:
            k8s.setdefault(d["kind"], []).append(d)

# 3. Kubernetes wiring: the things that silently break at runtime.
def check(name, fn):
    try:
        problems = fn()
    except Exception as e:  # a missing key means the manifest is not shaped as expected
        problems = [f"{type(e).__name__}: {e}"]
    report(not problems, name, "; ".join(problems))

def k8s_wiring():
    p = []
    workloads = k8s.get("StatefulSet", []) + k8s.get("Deployment", [])
    if len(workloads) != 1:
        return [f"expected one workload (StatefulSet/Deployment), found {len(workloads)}"]
    w = workloads[0]
    spec = w["spec"]
    labels = spec["template"]["metadata"]["labels"]
    if spec.get("replicas") != 3:
        p.append("replicas is not 3")
    if spec["selector"]["matchLabels"].items() - labels.items():
        p.append("workload selector does not match pod labels")
    containers = {c["name"]: c for c in spec["template"]["spec"]["containers"]}
    gw = containers.get("rbac-gateway")
    if gw is None or len(containers) != 2:
        return p + ["expected two containers, one named rbac-gateway"]
    env = {e["name"]: e.get("value") for e in gw.get("env", [])}
    ports = {x["name"]: x["containerPort"] for x in gw.get("ports", [])}
    up = env.get("GATEWAY_UPSTREAM", "")
    if not up.startswith("127.0.0.1:"):
        p.append("GATEWAY_UPSTREAM is not loopback (Console must listen on 127.0.0.1 only)")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        g = gw.get(probe, {}).get("httpGet", {})
        if g.get("path") != path or ports.get(g.get("port"), g.get("port")) != 9090:
            p.append(f"gateway {probe} is not GET {path} on the admin port 9090")
    mounts = {m["name"]: m for m in gw.get("volumeMounts", [])}
    vols = {v["name"]: v for v in spec["template"]["spec"].get("volumes", [])}
    routes_mounts = [m for m in gw.get("volumeMounts", []) if "configMap" in vols.get(m["name"], {})]
    if not routes_mounts:
        p.append("routes ConfigMap is not mounted in the gateway")
    for m in routes_mounts:
        if "subPath" in m or "subPathExpr" in m:
            p.append("routes ConfigMap mounted with subPath (updates would never propagate)")
        if not env.get("GATEWAY_ROUTES", "").startswith(m["mountPath"].rstrip("/") + "/"):
            p.append("GATEWAY_ROUTES is not inside the ConfigMap mount")
    spool = env.get("GATEWAY_AUDIT_SPOOL", "")
    claim_names = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    spool_mounts = [m for m in gw.get("volumeMounts", []) if spool.startswith(m["mountPath"].rstrip("/") + "/")]
    if not spool_mounts:
        p.append("GATEWAY_AUDIT_SPOOL is not on a mounted volume")
    elif spool_mounts[0]["name"] not in claim_names and spool_mounts[0]["name"] not in vols:
        p.append("spool volume is neither a volumeClaimTemplate nor a pod volume")
    res = gw.get("resources", {})
    if not res.get("requests") or not res.get("limits", {}).get("memory"):
        p.append("gateway has no resource requests / memory limit")
    # Service: selects the pods, targets only the gateway's proxy port.
    for svc in k8s.get("Service", []):
        if svc["spec"]["selector"].items() - labels.items():
            p.append(f"Service {svc['metadata']['name']} selector does not match pod labels")
        for port in svc["spec"]["ports"]:
            t = port.get("targetPort")
            if ports.get(t, t) != 8080:
                p.append(f"Service {svc['metadata']['name']} exposes {t}, not the gateway's 8080")
    for pdb in k8s.get("PodDisruptionBudget", []):
        if pdb["spec"]["selector"]["matchLabels"].items() - labels.items():
            p.append("PDB selector does not match pod labels")
        if pdb["spec"].get("minAvailable") != 2:
            p.append("PDB minAvailable is not 2")
    cms = {c["metadata"]["name"] for c in k8s.get("ConfigMap", [])}
    for m in routes_mounts:
        if vols[m["name"]]["configMap"]["name"] not in cms:
            p.append("mounted ConfigMap is not defined in configmap.yaml")
    return p
check("k8s wiring: probes, ConfigMap mount without subPath, spool volume, Service/PDB selectors", k8s_wiring)

# 4. Dockerfile: cmake, release build, COPY sources that exist.
def dockerfile():
    p = []
    text = open("deploy/Dockerfile").read()
    if "cmake" not in text:
        p.append("does not install cmake")
    if "cargo build --release" not in text:
        p.append("does not run `cargo build --release`")
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        m = re.match(r"\s*COPY\s+(.*)", line)
        if not m or "--from=" in m.group(1):
            continue
        args = [a for a in m.group(1).split() if not a.startswith("--")]
        for src in args[:-1]:
            if not os.path.exists(src):
                p.append(f"COPY source {src} does not exist (build context: repository root)")
    return p
check("Dockerfile: installs cmake, runs cargo build --release, COPY sources exist", dockerfile)

# 5. compose: only the gateway publishes a port, 8080; build contexts and bind mounts exist.
def compose():
    p = []
    c = docs["deploy/compose.yaml"][0]
    services = c["services"]
    published = {n: s.get("ports", []) for n, s in services.items() if s.get("ports")}
    if list(published) != ["gateway"]:
        p.append(f"services publishing ports: {sorted(published)} (only gateway allowed)")
    gw_ports = [str(x.get("published") if isinstance(x, dict) else x) for x in published.get("gateway", [])]
    if len(gw_ports) != 1 or not re.match(r"^(\d+\.\d+\.\d+\.\d+:)?8080(:8080)?$", gw_ports[0].split("/")[0]):
        p.append(f"gateway publishes {gw_ports}, expected only 8080")
    for n, s in services.items():
        b = s.get("build")
        if b:
            ctx = os.path.normpath(os.path.join("deploy", b["context"] if isinstance(b, dict) else b))
            df = os.path.join(ctx, b.get("dockerfile", "Dockerfile") if isinstance(b, dict) else "Dockerfile")
            if not os.path.isfile(df):
                p.append(f"{n}: Dockerfile {df} not found")
        for v in s.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith((".", "/")) and not os.path.exists(os.path.normpath(os.path.join("deploy", src))):
                p.append(f"{n}: bind mount source {src} not found")
        for dep, cond in (s.get("depends_on") or {}).items():
            if dep not in services:
                p.append(f"{n}: depends_on unknown service {dep}")
            elif isinstance(cond, dict) and cond.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                # the image's own HEALTHCHECK counts too; the stand-in and postgres get one here
                p.append(f"{n}: waits for {dep} to be healthy but {dep} has no healthcheck")
    return p
check("compose: only the gateway publishes a port (8080); builds, mounts, depends_on resolve", compose)

# 6. Grafana: JSON parses, every rbac_gateway_* name is exposed by the binary.
def grafana():
    p = []
    text = open("deploy/grafana/rbac-gateway.json").read()
    dash = json.loads(text)
    if dash.get("schemaVersion") != 39:
        p.append("schemaVersion is not 39")
    if not any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in dash.get("templating", {}).get("list", [])):
        p.append("no Prometheus datasource variable")
    exposed = set(re.findall(r'"(rbac_gateway_[a-z_]+)"', open("src/runtime/metrics.rs").read()))
    if not exposed:
        return ["no \"rbac_gateway_ metric names found in src/runtime/metrics.rs"]
    allowed = set(exposed)
    for n in exposed:  # histogram series
        allowed |= {n + "_bucket", n + "_sum", n + "_count"}
    used = set(re.findall(r"rbac_gateway_[a-z_]+", text))
    unknown = sorted(used - allowed)
    if unknown:
        p.append("metrics not exposed by src/runtime/metrics.rs: " + ", ".join(unknown))
    return p
check("grafana dashboard: JSON parses, schemaVersion 39, metric names exist in src/runtime/metrics.rs", grafana)

sys.exit(min(failures, 100))
PY
py_failures=$?
failures=$((failures + py_failures))

# --------------------------------------------------------------------------- console stand-in
if python3 -m py_compile deploy/console-standin/app.py 2>/tmp/check-deploy.$$; then
  pass "console stand-in compiles (py_compile)"
else
  fail "console stand-in compiles: $(tr '\n' ' ' </tmp/check-deploy.$$)"
fi
rm -f /tmp/check-deploy.$$ deploy/console-standin/__pycache__/app.*.pyc
rmdir deploy/console-standin/__pycache__ 2>/dev/null || true
if python3 -c 'import flask' 2>/dev/null; then
  if out=$(cd deploy/console-standin && PYTHONDONTWRITEBYTECODE=1 python3 - 2>&1 <<'PY'
from app import app
c = app.test_client()
for path, view in [("/auth/login", "auth.login"), ("/console/customers/42", "customers.customer_detail"), ("/ops", "ops.index")]:
    r = c.get(path, headers={"X-Rbac-Admin-Id": "7", "X-Rbac-Roles": "console-manager"})
    j = r.get_json()
    assert r.status_code == 200 and j["view"] == view, (path, r.status_code, j)
    assert j["rbac_headers"].get("X-Rbac-Admin-Id") == "7", j
assert c.get("/console/customers/abc").status_code == 404
PY
  ); then pass "console stand-in answers /auth/login, /console/customers/<int:id>, /ops with view + X-Rbac-* headers"
  else fail "console stand-in smoke test: $out"; fi
else
  skip "console stand-in smoke test (flask not installed)"
fi

# --------------------------------------------------------------------------- shell scripts
for f in deploy/docker/healthcheck.sh scripts/check-deploy.sh; do
  if bash -n "$f"; then pass "bash -n $f"; else fail "bash -n $f"; fi
done
if command -v shellcheck >/dev/null; then
  if shellcheck deploy/docker/healthcheck.sh scripts/check-deploy.sh; then pass "shellcheck"; else fail "shellcheck"; fi
else
  skip "shellcheck (not installed)"
fi

# The container HEALTHCHECK probe against a fake admin listener: 200 -> 0, 503 -> 1, closed -> 1.
probe_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 - "$probe_port" <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == "/healthz" else 503
        self.send_response(code); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
fake_pid=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$probe_port") 2>/dev/null && break; sleep 0.1; done
probe() { GATEWAY_ADMIN_LISTEN="0.0.0.0:$1" deploy/docker/healthcheck.sh "$2" 2>/dev/null; echo $?; }
r_ok=$(probe "$probe_port" /healthz); r_503=$(probe "$probe_port" /readyz)
kill "$fake_pid" 2>/dev/null; wait "$fake_pid" 2>/dev/null
r_closed=$(probe "$probe_port" /healthz)
if [ "$r_ok$r_503$r_closed" = "011" ]; then
  pass "healthcheck.sh probe: 200 -> 0, 503 -> 1, connection refused -> 1"
else
  fail "healthcheck.sh probe: got exit codes $r_ok/$r_503/$r_closed for 200/503/refused, expected 0/1/1"
fi

# --------------------------------------------------------------------------- kubernetes
if command -v kubectl >/dev/null; then
  if out=$(kubectl kustomize deploy/kubernetes 2>&1 >/dev/null); then
    pass "kubectl kustomize deploy/kubernetes builds"
  else
    fail "kubectl kustomize deploy/kubernetes: $out"
  fi
else
  skip "kubectl kustomize (kubectl not installed)"
fi

# The example mapping in configmap.yaml must load. Uses an existing debug binary only (no build).
if [ -x target/debug/rbac-gateway ]; then
  tmp_routes=$(mktemp /tmp/check-deploy-routes.XXXXXX)
  python3 -c 'import yaml,sys; sys.stdout.write(yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))["data"]["routes.toml"])' >"$tmp_routes"
  if out=$(target/debug/rbac-gateway check --routes "$tmp_routes" 2>&1); then
    pass "configmap.yaml routes.toml passes rbac-gateway check"
  else
    fail "configmap.yaml routes.toml: $out"
  fi
  rm -f "$tmp_routes"
else
  skip "rbac-gateway check of configmap.yaml (no target/debug/rbac-gateway; run cargo build)"
fi

# --------------------------------------------------------------------------- systemd
# `systemd-analyze verify` checks the unit's syntax and directives. On a build machine the
# binary is not installed at /usr/local/bin/rbac-gateway (and the rbac-gateway user does not
# exist), which it reports; those complaints are about this machine, not the unit, so they are
# accepted. Any other line of output is a failure.
unit=deploy/systemd/rbac-gateway.service
if command -v systemd-analyze >/dev/null; then
  out=$(systemd-analyze verify "$unit" 2>&1)
  rest=$(printf '%s\n' "$out" | grep -v -e '^$' \
    -e 'Command /usr/local/bin/rbac-gateway is not executable' \
    -e "User.*rbac-gateway.*\(not found\|does not exist\|No such\)" || true)
  if [ -z "$rest" ]; then
    if [ -n "$out" ]; then
      pass "systemd-analyze verify $unit (accepted: binary not installed on this machine)"
    else
      pass "systemd-analyze verify $unit"
    fi
  else
    fail "systemd-analyze verify $unit: $(printf '%s' "$rest" | tr '\n' ' ')"
  fi
else
  skip "systemd-analyze verify (systemd-analyze not installed)"
fi
missing_directives=
for k in 'Type=simple' 'User=rbac-gateway' 'EnvironmentFile=/etc/rbac-gateway/env' \
         'ExecStart=/usr/local/bin/rbac-gateway serve' 'ExecReload=/bin/kill -HUP $MAINPID' \
         'StateDirectory=rbac-gateway' 'CapabilityBoundingSet=' 'ProtectSystem=strict'; do
  grep -qxF "$k" "$unit" || missing_directives="$missing_directives '$k'"
done
if [ -z "${missing_directives:-}" ]; then pass "$unit: required directives present"
else fail "$unit: missing lines:$missing_directives"; fi
env_vars=$(grep -oE '^[A-Z_0-9]+' deploy/systemd/env.example | sort -u)
if [ -x target/debug/rbac-gateway ]; then
  known=$(target/debug/rbac-gateway serve --help | grep -oE 'env: [A-Z_0-9]+' | cut -d' ' -f2)
  unknown=$(comm -23 <(printf '%s\n' "$env_vars") <(printf '%s\n' $known RUST_LOG | sort -u))
  if [ -z "$unknown" ]; then pass "env.example: every variable is one serve --help lists"
  else fail "env.example: unknown variables: $unknown"; fi
else
  skip "env.example variables vs serve --help (no target/debug/rbac-gateway)"
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "check-deploy: $failures check(s) failed"
  exit 1
fi
echo "check-deploy: all checks passed"
