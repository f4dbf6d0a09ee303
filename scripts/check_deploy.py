#!/usr/bin/env python3
"""Static (and cheap functional) checks of deploy/: everything that can be verified without
Docker, a Kubernetes cluster or a running systemd. Prints one line per check (PASS / FAIL / SKIP)
and exits non-zero when any check fails. Run from anywhere; it works from the repository root.
`scripts/check-deploy.sh` (what .ci/run calls) makes sure PyYAML is there, then runs this.

Needs PyYAML. Uses, when present: kubectl (kustomize build), systemd-analyze, shellcheck, flask
(stand-in smoke tests), promtool (the dashboard's queries parse), and an already built binary
(never builds): the newer of target/release/rbac-gateway and target/debug/rbac-gateway, or
CHECK_DEPLOY_BIN. With it: every listener and secret `serve --help` names is carried by every
target, the binary is started (every listener on port 0, no database needed) and every metric
family its /metrics exposes must be on the dashboard or on its "Not charted, on purpose" list;
the example ConfigMap mapping is validated.
"""
import glob, json, os, re, secrets, subprocess, sys, tempfile, time, urllib.request
import http.server
import importlib.util
import shutil
import threading

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

try:
    import yaml
except ImportError:
    print("FAIL  python3 + PyYAML available (pip install pyyaml failed)")
    sys.exit(1)


def newest_binary():
    """The newer of the release and the debug build, or none (never builds)."""
    found = ""
    for b in ("target/release/rbac-gateway", "target/debug/rbac-gateway"):
        if os.access(b, os.X_OK) and (not found or os.stat(b).st_mtime > os.stat(found).st_mtime):
            found = b
    return found


BIN = os.environ.get("CHECK_DEPLOY_BIN", "") or newest_binary()

failures = 0
def report(ok, name, detail=""):
    global failures
    if ok:
        print(f"PASS  {name}")
    else:
        failures += 1
        print(f"FAIL  {name}" + (f": {detail}" if detail else ""))

def skip(name, why):
    print(f"SKIP  {name} ({why})")

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
    # Services: select the pods; `console` targets only the gateway's proxy port, no Service
    # the admin port (9090) or Console's, the others one of the gateway's listeners.
    for svc in k8s.get("Service", []):
        name = svc["metadata"]["name"]
        if svc["spec"]["selector"].items() - labels.items():
            p.append(f"Service {name} selector does not match pod labels")
        for port in svc["spec"]["ports"]:
            t = port.get("targetPort")
            n = ports.get(t, t)
            if name == "console" and n != 8080:
                p.append(f"Service console exposes {t}, not the gateway's 8080")
            elif n == 9090 or n not in ports.values():
                p.append(f"Service {name} exposes {t}: not a listener of the gateway's (or its admin port)")
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

def k8s_resources():
    p = []
    for kind in ("StatefulSet", "Deployment", "CronJob", "Job"):
        for w in k8s.get(kind, []):
            spec = w["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else w["spec"]
            for c in spec["template"]["spec"]["containers"]:
                r = c.get("resources", {})
                missing = [k for k, v in (("requests.cpu", r.get("requests", {}).get("cpu")),
                                          ("requests.memory", r.get("requests", {}).get("memory")),
                                          ("limits.memory", r.get("limits", {}).get("memory"))) if not v]
                if missing:
                    p.append(f"{kind}/{w['metadata']['name']} container {c['name']}: no {', '.join(missing)}")
    return p
check("k8s resources: every container of every workload has cpu and memory requests and a memory limit", k8s_resources)

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

# 6. What the binary says it has: `serve --help` names its listeners (--listen, --*-listen) and
# its secrets (the variables whose values --help hides); each command's --help, the secrets a
# one-shot container needs. Without a built binary these checks are skipped.
def help_entries(cmd):
    """One dict per option of `rbac-gateway CMD --help`: flag, env, hidden (a secret), text."""
    out = subprocess.run([BIN, cmd, "--help"], env={"COLUMNS": "1000"}, capture_output=True,
                         text=True, timeout=30).stdout
    entries = []
    for line in out.splitlines():
        m = re.match(r"^\s+(?:-\w, )?--([a-z0-9-]+)", line)
        if m:
            entries.append({"flag": m.group(1), "text": line})
        elif entries and line.strip():
            entries[-1]["text"] += " " + line.strip()
    for e in entries:
        v = re.search(r"\[env: ([A-Z0-9_]+)(=[^\]]*)?\]", e["text"])
        e["env"] = v.group(1) if v else None
        e["hidden"] = bool(v) and v.group(2) is None
    return entries

serve_opts, LISTENERS, SECRETS, NEEDS = [], {}, [], {}
if BIN:
    serve_opts = help_entries("serve")
    by_flag = {e["flag"]: e for e in serve_opts}
    LISTENERS = {e["flag"]: e["env"] for e in serve_opts if e["flag"] == "listen" or e["flag"].endswith("-listen")}
    SECRETS = [e["env"] for e in serve_opts if e["hidden"]]
    for e in serve_opts:  # "Needs --a and --b": a target that sets this sets those too
        m = re.search(r"Needs ((?:--[a-z0-9-]+(?:, | and )?)+)", e["text"])
        if m and e["env"]:
            NEEDS[e["env"]] = [by_flag[f]["env"] for f in re.findall(r"--([a-z0-9-]+)", m.group(1))]
    report(len(LISTENERS) >= 4 and "DATABASE_URL" in SECRETS,
           f"{BIN} serve --help: listeners {', '.join('--' + f for f in LISTENERS)}; secrets {', '.join(SECRETS)}",
           "expected at least --listen, --admin-listen, --authz-listen, --freescout-webhook-listen and DATABASE_URL")
    COMMAND_SECRETS = {}
    def command_secrets(cmd):
        if cmd not in COMMAND_SECRETS:
            COMMAND_SECRETS[cmd] = [e["env"] for e in help_entries(cmd) if e["hidden"]]
        return COMMAND_SECRETS[cmd]

def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])

def carries(target, env, is_secret_ok, listener_port_ok):
    """Problems of one target running `serve` whose environment is `env` (name -> value)."""
    p = []
    for flag, var in LISTENERS.items():
        if var not in env or env[var] in (None, ""):
            p.append(f"no {var} (--{flag})")
        elif not listener_port_ok(port_of(env[var])):
            p.append(f"{var} {env[var]}: its port is not exposed")
    ports = [port_of(env[v]) for v in LISTENERS.values() if env.get(v)]
    if len(ports) != len(set(ports)):
        p.append(f"two listeners share a port: {sorted(ports)}")
    for var in SECRETS:
        if var not in env:
            p.append(f"no {var} (a secret)")
        else:
            why = is_secret_ok(var)
            if why:
                p.append(f"{var}: {why}")
    for var, needed in NEEDS.items():
        if env.get(var):
            p += [f"{var} is set but {n} (which it needs) is not" for n in needed if n not in env]
    return p

def gateway_containers():
    """(workload, container) of every Kubernetes container that runs the gateway's image."""
    for kind in ("StatefulSet", "Deployment", "CronJob", "Job"):
        for w in k8s.get(kind, []):
            spec = w["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else w["spec"]
            for c in spec["template"]["spec"]["containers"]:
                if "/rbac-gateway:" in c.get("image", ""):
                    yield f"{kind}/{w['metadata']['name']}", c, spec["template"]["spec"]

def k8s_secret_keys():
    keys = set()
    for path in glob.glob("deploy/kubernetes/*.yaml"):
        for d in docs.get(path, []):
            if isinstance(d, dict) and d.get("kind") == "Secret":
                for k in list(d.get("stringData", {})) + list(d.get("data", {})):
                    keys.add((d["metadata"]["name"], k))
    return keys

def k8s_targets():
    p = []
    secret_keys = k8s_secret_keys()
    def db_secrets(c):
        # The Secrets a container may take DATABASE_URL from: its env's secretKeyRef, or envFrom.
        env = {e["name"]: e for e in c.get("env", [])}
        ref = env.get("DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name")
        return ({ref} if ref else set()) | {f["secretRef"]["name"] for f in c.get("envFrom", []) if "secretRef" in f}
    containers = list(gateway_containers())
    serve_db = set().union(*[db_secrets(c) for _, c, _ in containers
                             if (c.get("args") or c.get("command") or ["serve"])[0] == "serve"])
    for where, c, _ in containers:
        # migrate alters tables and functions: the tables' owner, never the gateways' login
        # (deploy/gateway-grants.sql's role only).
        shared = db_secrets(c) & serve_db
        if (c.get("args") or c.get("command") or ["serve"])[0] == "migrate" and shared:
            p.append(f"{where} (migrate): DATABASE_URL from {', '.join(sorted(shared))}, the gateways' own Secret: migrate needs the tables' owner")
    for where, c, pod in containers:
        cmd = (c.get("args") or c.get("command") or ["serve"])[0]
        env = {e["name"]: e for e in c.get("env", [])}
        def secret_ok(var):
            ref = env[var].get("valueFrom", {}).get("secretKeyRef")
            if not ref:
                return "a literal value, not a secretKeyRef"
            if (ref.get("name"), ref.get("key")) not in secret_keys:
                return f"Secret {ref.get('name')} key {ref.get('key')} is not in secret.example.yaml"
            return None
        if cmd == "serve":
            container_ports = {x["containerPort"] for x in c.get("ports", [])}
            values = {k: (v.get("value") if "value" in v else "<secret>") for k, v in env.items()}
            p += [f"{where}: {x}" for x in carries(where, values, secret_ok, lambda n: n in container_ports)]
        else:
            for var in command_secrets(cmd):
                if var not in env:
                    p.append(f"{where} ({cmd}): no {var}")
                elif secret_ok(var):
                    p.append(f"{where} ({cmd}): {var}: {secret_ok(var)}")
    return p

def compose_env(service):
    e = service.get("environment") or {}
    if isinstance(e, list):
        e = dict((x.split("=", 1) + [None])[:2] for x in e)
    return e

def compose_targets():
    p = []
    services = docs["deploy/compose.yaml"][0]["services"]
    for n, svc in services.items():
        if not str(svc.get("image", "")).startswith("rbac-gateway:"):
            continue
        cmd = (svc.get("command") or ["serve"])[0]
        env = compose_env(svc)
        if cmd == "serve":
            exposed = {int(str(x).split(":")[-1].split("/")[0]) for x in svc.get("expose", [])}
            for x in svc.get("ports", []):
                exposed.add(int(str(x.get("target") if isinstance(x, dict) else x).split(":")[-1].split("/")[0]))
            p += [f"{n}: {x}" for x in carries(n, env, lambda v: None, lambda port: port in exposed)]
        else:
            p += [f"{n} ({cmd}): no {v}" for v in command_secrets(cmd) if v not in env]
    return p

def systemd_targets():
    env = {}
    for line in open("deploy/systemd/env.example"):
        m = re.match(r"^([A-Z_0-9]+)=(.*)$", line.strip())
        if m:
            env[m.group(1)] = m.group(2)
    unit = open("deploy/systemd/rbac-gateway.service").read()
    def secret_ok(var):
        if re.search(rf"^Environment=.*\b{var}=", unit, re.M):
            return "set in the unit (world-readable), not only in the env file"
        return None
    return carries("systemd", env, secret_ok, lambda port: True)

if BIN:
    check("k8s: the gateway carries every listener (env + containerPort) and every secret (secretKeyRef to "
          "secret.example.yaml); the sweep and migrate containers their commands' secrets, migrate's database "
          "URL not the gateways'", k8s_targets)
    check("compose: the gateway carries every listener (exposed) and every secret; migrate its secrets", compose_targets)
    check("systemd: env.example sets every listener and every secret (none in the unit)", systemd_targets)
else:
    skip("every target carries every listener and secret", "no built binary; run cargo build")

# 6b. OpenTelemetry: the OTEL_* variables the gateway reads are the ones src/runtime/telemetry/
# config.rs names; every one a target sets (or comments) is among them, the Kubernetes and
# systemd targets point at a collector over http/protobuf, docs/telemetry.md documents every one,
# and (with a built binary) a protocol the gateway cannot speak is refused at start with 64.
def otel_read():
    return set(re.findall(r'"(OTEL_[A-Z_]+)"', open("src/runtime/telemetry/config.rs").read()))

def otel_targets():
    p, read = [], otel_read()
    if "OTEL_EXPORTER_OTLP_ENDPOINT" not in read:
        return ["no OTEL_ variables found in src/runtime/telemetry/config.rs"]
    targets = {}
    for where, c, _ in gateway_containers():
        if where.startswith(("Deployment", "StatefulSet")):
            targets[f"k8s {where}"] = {e["name"]: e.get("value", "<from>") for e in c.get("env", [])}
    env = {}
    for line in open("deploy/systemd/env.example"):
        m = re.match(r"^#?([A-Z_0-9]+)=(.*)$", line.strip())
        if m:
            env[m.group(1)] = m.group(2)
    targets["systemd env.example"] = env
    for where, env in targets.items():
        otel = {k: v for k, v in env.items() if k.startswith("OTEL_")}
        unknown = sorted(set(otel) - read)
        if unknown:
            p.append(f"{where}: sets variables the gateway does not read: {unknown}")
        endpoint = otel.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        if not re.match(r"^https?://[^/]+", endpoint):
            p.append(f"{where}: OTEL_EXPORTER_OTLP_ENDPOINT does not point at a collector ({endpoint!r})")
        if otel.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") != "http/protobuf":
            p.append(f"{where}: OTEL_EXPORTER_OTLP_PROTOCOL is not http/protobuf")
    doc = open("docs/telemetry.md").read()
    undocumented = sorted(v for v in read if v not in doc)
    if undocumented:
        p.append(f"docs/telemetry.md does not document {undocumented}")
    return p
check("OpenTelemetry: the Kubernetes and systemd targets point at a collector with variables the gateway "
      "reads, and docs/telemetry.md documents each", otel_targets)

def otel_refused():
    with tempfile.TemporaryDirectory(prefix="check-deploy-otel-") as tmp:
        out = subprocess.run([BIN, "serve", "--routes", "routes.toml", "--database-url",
                              "postgres://check-deploy@127.0.0.1:1/none", "--audit-spool", os.path.join(tmp, "spool"),
                              "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
                             env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
                             capture_output=True, text=True, timeout=30)
    if out.returncode != 64 or "http/protobuf" not in out.stderr:
        return [f"exit {out.returncode}: {out.stderr.strip()[-300:]}"]
    return []
if BIN:
    check(f"OpenTelemetry: {BIN} refuses OTEL_EXPORTER_OTLP_PROTOCOL=grpc at start (exit 64, says http/protobuf)", otel_refused)
else:
    skip("OpenTelemetry: an unsupported protocol refused at start", "no built binary; run cargo build")

# 7. Grafana: every metric family the binary exposes is charted or listed as left out on purpose
# (the dashboard's "Not charted, on purpose" panel), and every name the dashboard uses exists.
# The families are those src/runtime/metrics.rs declares and those the binary's /metrics
# exposes, started here with every listener (no database: the families exist from start-up).
def live_metrics():
    tmp = tempfile.mkdtemp(prefix="check-deploy-gw-")
    args = [BIN, "serve", "--routes", "routes.toml", "--database-url", "postgres://check-deploy@127.0.0.1:1/none",
            "--audit-spool", os.path.join(tmp, "audit.spool"), "--threads", "1",
            "--ticket-validation-url", "http://127.0.0.1:1/{ticket_id}", "--log-format", "json"]
    for flag in LISTENERS:
        args += [f"--{flag}", "127.0.0.1:0"]
    env = {"GATEWAY_FREESCOUT_WEBHOOK_SECRET": secrets.token_hex(16), "RUST_LOG": "info"}
    log_path = os.path.join(tmp, "gateway.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        bound, deadline = {}, time.time() + 20
        while time.time() < deadline and "admin_listen" not in bound:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited {proc.returncode}: {open(log_path).read()[-2000:]}")
            for line in open(log_path):
                try:
                    v = json.loads(line)
                except ValueError:
                    continue
                bound.update({k: x for k, x in v.items() if k.endswith("listen")})
            time.sleep(0.1)
        if "admin_listen" not in bound:
            raise RuntimeError(f"no 'listening' line within 20 s: {open(log_path).read()[-2000:]}")
        with urllib.request.urlopen(f"http://{bound['admin_listen']}/metrics", timeout=5) as r:
            text = r.read().decode()
        return text, bound
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # Its spool and log go with it (what went wrong is in the exception raised above).
        shutil.rmtree(tmp, ignore_errors=True)

def dashboard_names(dash):
    """(charted, left_out): metric names in the panels' queries and template variables, and in
    the "Not charted, on purpose" text panel."""
    charted, left_out = set(), set()
    def walk(panels):
        for panel in panels:
            if panel.get("type") == "text" and panel.get("title", "").startswith("Not charted"):
                left_out.update(re.findall(r"rbac_gateway_[a-z_]+", panel.get("options", {}).get("content", "")))
            for t in panel.get("targets", []):
                charted.update(re.findall(r"rbac_gateway_[a-z_]+", t.get("expr", "")))
            walk(panel.get("panels", []))
    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        charted.update(re.findall(r"rbac_gateway_[a-z_]+", json.dumps(v.get("query", ""))))
    return charted, left_out

def grafana():
    p = []
    dash = json.loads(open("deploy/grafana/rbac-gateway.json").read())
    if dash.get("schemaVersion") != 39:
        p.append("schemaVersion is not 39")
    if not any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in dash.get("templating", {}).get("list", [])):
        p.append("no Prometheus datasource variable")
    declared = set(re.findall(r'"(rbac_gateway_[a-z_]+)"', open("src/runtime/metrics.rs").read()))
    if not declared:
        return ["no \"rbac_gateway_ metric names found in src/runtime/metrics.rs"]
    families = set(declared)
    if BIN:
        text, bound = live_metrics()
        live = set(re.findall(r"^# TYPE (rbac_gateway_[a-z_]+) ", text, re.M))
        missing_bound = [f for f in LISTENERS if f.replace("-", "_") not in bound]
        report(not missing_bound and live == declared,
               f"live /metrics of {BIN}, started with every listener ({', '.join(f'{k} {v}' for k, v in sorted(bound.items()))}): "
               f"{len(live)} families, the same as src/runtime/metrics.rs declares",
               "; ".join(([f"listeners not reported bound: {missing_bound}"] if missing_bound else [])
                         + ([f"declared but not on /metrics at start-up (not primed, or a stale binary: cargo build): {sorted(declared - live)}"] if declared - live else [])
                         + ([f"on /metrics but not in src/runtime/metrics.rs: {sorted(live - declared)}"] if live - declared else [])))
        families |= live
    else:
        skip("live /metrics of the built binary", "no built binary; run cargo build")
    allowed = set(families)
    for n in families:  # histogram series
        allowed |= {n + "_bucket", n + "_sum", n + "_count"}
    charted, left_out = dashboard_names(dash)
    family = lambda n: re.sub(r"_(bucket|sum|count)$", "", n) if n not in families else n
    unknown = sorted((charted | left_out) - allowed)
    if unknown:
        p.append("metrics the binary does not expose: " + ", ".join(unknown))
    nowhere = sorted(families - {family(n) for n in charted} - left_out)
    if nowhere:
        p.append("not on the dashboard and not in its 'Not charted, on purpose' panel: " + ", ".join(nowhere))
    both = sorted(left_out & {family(n) for n in charted})
    if both:
        p.append("listed as not charted, yet charted: " + ", ".join(both))
    return p
check("grafana dashboard: every metric family the binary exposes is charted or listed as not charted, "
      "and every name it uses exists", grafana)

# 8. The dashboard's queries parse (promtool, when installed), template variables filled in.
def promql():
    dash = json.loads(open("deploy/grafana/rbac-gateway.json").read())
    exprs = []
    def walk(panels):
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))
    walk(dash["panels"])
    fill = {"$__rate_interval": "1m", "$instance": ".*", "$cluster": "S1"}
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"check_deploy:expr_{i}", "expr": re.sub(r"\$__rate_interval|\$instance|\$cluster", lambda m: fill[m.group(0)], e)}
        for i, e in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(rules, f)
    out = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    return [] if out.returncode == 0 else [(out.stdout + out.stderr).replace("\n", " ")]
if subprocess.run(["sh", "-c", "command -v promtool"], capture_output=True).returncode == 0:
    check("grafana dashboard: every query parses (promtool check rules)", promql)
else:
    skip("grafana dashboard queries parse", "promtool not installed")


# 9. The console and FreeScout stand-ins compile, and answer as the gateway and the sweep expect.
def run(args, **kw):
    """`args` run with stdout and stderr together, as text."""
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)

STANDIN = "deploy/console-standin"
compiled = subprocess.run([sys.executable, "-m", "py_compile", f"{STANDIN}/app.py", f"{STANDIN}/freescout.py"],
                          capture_output=True, text=True)
if compiled.returncode == 0:
    report(True, "console and FreeScout stand-ins compile (py_compile)")
else:
    report(False, "stand-ins compile: " + compiled.stderr.replace("\n", " "))
for pyc in glob.glob(f"{STANDIN}/__pycache__/app.*.pyc") + glob.glob(f"{STANDIN}/__pycache__/freescout.*.pyc"):
    os.unlink(pyc)
try:
    os.rmdir(f"{STANDIN}/__pycache__")
except OSError:
    pass

CONSOLE_SMOKE = """
from app import app
c = app.test_client()
for path, view in [("/auth/login", "auth.login"), ("/console/customers/42", "customers.customer_detail"), ("/ops", "ops.index")]:
    r = c.get(path, headers={"X-Rbac-Admin-Id": "7", "X-Rbac-Roles": "console-manager"})
    j = r.get_json()
    assert r.status_code == 200 and j["view"] == view, (path, r.status_code, j)
    assert j["rbac_headers"].get("X-Rbac-Admin-Id") == "7", j
assert c.get("/console/customers/abc").status_code == 404
"""
FREESCOUT_SMOKE = """
import freescout
c = freescout.app.test_client()
assert c.get("/health").status_code == 200
assert c.get("/api/conversations/42").get_json() == {"id": "42", "status": "active"}
freescout.set_status("42", "closed")
assert c.get("/api/conversations/42").get_json() == {"id": "42", "status": "closed"}
assert c.get("/api/conversations/43").get_json()["status"] == "active"
"""
def smoke(script, **env):
    """`script` run by this interpreter in the stand-ins' folder: (passed, its output)."""
    out = run([sys.executable, "-"], input=script.lstrip("\n"), cwd=STANDIN,
              env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **env})
    return out.returncode == 0, out.stdout.rstrip("\n")

if importlib.util.find_spec("flask") is not None:
    ok, out = smoke(CONSOLE_SMOKE)
    report(ok, "console stand-in answers /auth/login, /console/customers/<int:id>, /ops with view + X-Rbac-* headers"
           if ok else f"console stand-in smoke test: {out}")
    with tempfile.TemporaryDirectory(prefix="check-deploy-freescout.") as state:
        ok, out = smoke(FREESCOUT_SMOKE, FREESCOUT_STATE=f"{state}/tickets.json")
    report(ok, "FreeScout stand-in answers a ticket's status as GATEWAY_TICKET_VALIDATION_URL expects (active until closed)"
           if ok else f"FreeScout stand-in smoke test: {out}")
else:
    skip("stand-in smoke tests", "flask not installed")

# 10. Shell scripts: they parse (and shellcheck finds nothing, when installed).
SHELL_SCRIPTS = ["deploy/docker/healthcheck.sh", "scripts/check-deploy.sh"]
for f in SHELL_SCRIPTS:
    report(subprocess.run(["bash", "-n", f]).returncode == 0, f"bash -n {f}")
if shutil.which("shellcheck"):
    report(subprocess.run(["shellcheck", *SHELL_SCRIPTS]).returncode == 0, "shellcheck")
else:
    skip("shellcheck", "not installed")

# 11. The container HEALTHCHECK probe against a fake admin listener: 200 -> 0, 503 -> 1, closed -> 1.
class FakeAdmin(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == "/healthz" else 503
        self.send_response(code); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass

def probe(port, path):
    env = {**os.environ, "GATEWAY_ADMIN_LISTEN": f"0.0.0.0:{port}"}
    return subprocess.run(["deploy/docker/healthcheck.sh", path], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode

fake = http.server.HTTPServer(("127.0.0.1", 0), FakeAdmin)
probe_port = fake.server_address[1]
threading.Thread(target=fake.serve_forever, daemon=True).start()
r_ok, r_503 = probe(probe_port, "/healthz"), probe(probe_port, "/readyz")
fake.shutdown()
fake.server_close()
r_closed = probe(probe_port, "/healthz")
report((r_ok, r_503, r_closed) == (0, 1, 1), "healthcheck.sh probe: 200 -> 0, 503 -> 1, connection refused -> 1"
       if (r_ok, r_503, r_closed) == (0, 1, 1) else
       f"healthcheck.sh probe: got exit codes {r_ok}/{r_503}/{r_closed} for 200/503/refused, expected 0/1/1")

# 12. Kubernetes: kustomize builds the objects (when kubectl is installed), and the example
# mapping in configmap.yaml loads (an existing binary only: no build).
if shutil.which("kubectl"):
    out = subprocess.run(["kubectl", "kustomize", "deploy/kubernetes"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    report(out.returncode == 0, "kubectl kustomize deploy/kubernetes builds" if out.returncode == 0
           else "kubectl kustomize deploy/kubernetes: " + out.stderr.rstrip("\n"))
else:
    skip("kubectl kustomize", "kubectl not installed")

if BIN:
    with tempfile.NamedTemporaryFile("w", prefix="check-deploy-routes.", dir="/tmp") as routes:
        routes.write(yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))["data"]["routes.toml"])
        routes.flush()
        out = run([BIN, "check", "--routes", routes.name])
    report(out.returncode == 0, "configmap.yaml routes.toml passes rbac-gateway check" if out.returncode == 0
           else "configmap.yaml routes.toml: " + out.stdout.rstrip("\n"))
else:
    skip("rbac-gateway check of configmap.yaml", "no built binary; run cargo build")

# 13. systemd: `systemd-analyze verify` checks the unit's syntax and directives. On a build
# machine the binary is not installed at /usr/local/bin/rbac-gateway (and the rbac-gateway user
# does not exist), which it reports; those complaints are about this machine, not the unit, so
# they are accepted. Any other line of output is a failure.
UNIT = "deploy/systemd/rbac-gateway.service"
if shutil.which("systemd-analyze"):
    out = run(["systemd-analyze", "verify", UNIT]).stdout.rstrip("\n")
    rest = [l for l in out.split("\n") if l
            and "Command /usr/local/bin/rbac-gateway is not executable" not in l
            and not re.search(r"User.*rbac-gateway.*(not found|does not exist|No such)", l)]
    if not rest:
        report(True, f"systemd-analyze verify {UNIT} (accepted: binary not installed on this machine)"
               if out else f"systemd-analyze verify {UNIT}")
    else:
        report(False, f"systemd-analyze verify {UNIT}: " + " ".join(rest))
else:
    skip("systemd-analyze verify", "systemd-analyze not installed")
unit_lines = open(UNIT).read().split("\n")
missing = [k for k in ["Type=simple", "User=rbac-gateway", "EnvironmentFile=/etc/rbac-gateway/env",
                       "ExecStart=/usr/local/bin/rbac-gateway serve", "ExecReload=/bin/kill -HUP $MAINPID",
                       "StateDirectory=rbac-gateway", "CapabilityBoundingSet=", "ProtectSystem=strict"]
           if k not in unit_lines]
report(not missing, f"{UNIT}: required directives present" if not missing
       else f"{UNIT}: missing lines:" + "".join(f" '{k}'" for k in missing))
env_vars = sorted({m.group(0) for m in (re.match(r"[A-Z_0-9]+", l) for l in open("deploy/systemd/env.example")) if m})
if BIN:
    known = set(re.findall(r"env: ([A-Z_0-9]+)", subprocess.run([BIN, "serve", "--help"], capture_output=True,
                                                                text=True).stdout)) | {"RUST_LOG"}
    # The OpenTelemetry variables are no flags: the ones src/runtime/telemetry/config.rs reads.
    known |= otel_read()
    # Variables read by `serve` itself, never a flag (a secret such as GATEWAY_AUDIT_WRITER_TOKEN).
    known |= set(re.findall(r'std::env::var\("([A-Z_0-9]+)"\)', open("src/cli/serve/config.rs").read()))
    unknown = [v for v in env_vars if v not in known]
    report(not unknown, "env.example: every variable is one serve --help lists (or an OTEL_ variable, or one serve reads itself)" if not unknown
           else "env.example: unknown variables: " + "\n".join(unknown))
else:
    skip("env.example variables vs serve --help", "no built binary")

print()
if failures:
    print(f"check-deploy: {failures} check(s) failed")
    sys.exit(1)
print("check-deploy: all checks passed")
