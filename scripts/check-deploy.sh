#!/usr/bin/env bash
# Checks the deployment files without running them (called by scripts/test.sh):
#   - `kubectl kustomize` of every overlay (and the node-local component on top of dev),
#   - strict schema validation of what they render (kubernetes-validate),
#   - the policy checker (checkov) clean; each skip is an annotation with its reason beside it,
#   - `docker-compose config` of docker-compose.yml,
#   - every environment variable the compose file and the manifests set for Coffer's own
#     containers is read by the binary that runs there,
#   - the Prometheus alert rules (`promtool check rules`, `promtool test rules`) and the
#     Grafana dashboard's queries under k8s/monitoring/.
# Tools: kubectl must be installed; docker-compose comes from apt, the Python checkers go into
# a virtual environment of their own (they pin libraries that other tools on the machine need
# at other versions), cached in ${XDG_CACHE_HOME:-~/.cache}/coffer-deploy-tools.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

KUBERNETES_VERSION=1.31.0
CHECKOV_VERSION=3.3.30
KUBERNETES_VALIDATE_VERSION=1.37.0
TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/coffer-deploy-tools"

command -v kubectl >/dev/null || { echo "kubectl is needed for \`kubectl kustomize\`" >&2; exit 1; }
command -v docker-compose >/dev/null || {
  log "installing docker-compose"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
}
if ! "$TOOLS/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION" \
  || ! "$TOOLS/bin/pip" show kubernetes-validate 2>/dev/null | grep -qx "Version: $KUBERNETES_VALIDATE_VERSION"; then
  log "installing checkov and kubernetes-validate into $TOOLS"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "checkov==$CHECKOV_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

out=$(mktemp -d /tmp/coffer-deploy.XXXXXX)
trap 'rm -rf "$out"' EXIT

log "kubectl kustomize (every overlay; dev with the node-local component)"
for overlay in k8s/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" > "$out/$name.yaml"
done
# A component is checked inside an overlay: a throw-away one, beside the real ones.
mkdir -p "$out/node-local"
rel=$(realpath --relative-to="$out/node-local" k8s)
printf 'resources: [%s/overlays/dev]\ncomponents: [%s/components/node-local-workers]\n' "$rel" "$rel" \
  > "$out/node-local/kustomization.yaml"
kubectl kustomize "$out/node-local" > "$out/dev-node-local.yaml"
rm -r "$out/node-local"
# k8s/examples/ must stay out of every build (it holds placeholder secrets).
if grep -l 'change-me' "$out"/*.yaml; then echo "an example reached a kustomization" >&2; exit 1; fi

log "kubernetes-validate --strict (Kubernetes $KUBERNETES_VERSION)"
"$TOOLS/bin/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION" "$out"/*.yaml

log "checkov (Kubernetes policies)"
"$TOOLS/bin/checkov" -d "$out" --framework kubernetes --quiet --compact --skip-download

log "docker-compose config"
docker-compose -f docker-compose.yml config > "$out/compose.yaml"

log "environment variables set for Coffer are read by Coffer"
"$TOOLS/bin/python" - "$out" <<'PY'
"""Every variable set for a Coffer container must be one its binary reads.

What a binary reads: a quoted name in its crates' sources (clap's `env = "NAME"`,
`std::env::var("NAME")` and friends); `NAME_FILE` also counts when `NAME` is read through
`secret_from_env`, which derives it. The control plane embeds the worker, so it reads both
crates' names. Variables only used by the manifest itself (`$(POD_NAME)` in another value)
are not the binary's business.
"""
import pathlib
import re
import sys

import yaml

out = pathlib.Path(sys.argv[1])
root = pathlib.Path(".")


def sources(*crates):
    return "\n".join(p.read_text() for c in crates for p in (root / c / "src").rglob("*.rs"))


READS = {
    "coffer-control-plane": sources("control-plane", "worker"),
    "coffer-worker": sources("worker"),
}


def is_read(binary, name):
    text = READS[binary]
    if f'"{name}"' in text:
        return True
    base = name.removesuffix("_FILE")
    return base != name and f'"{base}"' in text and '{name}_FILE' in text


def binary_of(image, command):
    if not image.split("/")[-1].startswith("coffer:"):
        return None
    first = (command or ["coffer-control-plane"])[0]
    return first if first in READS else None


assert is_read("coffer-control-plane", "COFFER_ADMIN_TOKEN_FILE")
assert not is_read("coffer-worker", "COFFER_LISTEN"), "the check must tell binaries apart"
assert not is_read("coffer-control-plane", "COFFER_NOT_A_SETTING")

problems = []
checked = 0


def check(where, binary, names):
    global checked
    for name in sorted(names):
        checked += 1
        if not is_read(binary, name):
            problems.append(f"{where}: {name} is set but {binary} never reads it")


# docker-compose.yml, as compose resolves it.
compose = yaml.safe_load((out / "compose.yaml").read_text())
for service, spec in compose["services"].items():
    binary = binary_of(spec.get("image", ""), spec.get("entrypoint"))
    if binary:
        check(f"docker-compose.yml {service}", binary, (spec.get("environment") or {}).keys())

# Every rendered manifest: env entries and the keys of ConfigMaps used with envFrom.
for manifest in sorted(out.glob("*.yaml")):
    if manifest.name == "compose.yaml":
        continue
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if not pod:
            continue
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            binary = binary_of(container["image"], container.get("command"))
            if not binary:
                continue
            env = container.get("env", [])
            values = " ".join(str(e.get("value", "")) for e in env)
            names = {e["name"] for e in env if f"$({e['name']})" not in values}
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref:
                    names |= set(config_maps[ref])
            where = f"{manifest.name} {doc['kind']}/{doc['metadata']['name']}"
            check(where, binary, names)

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"{checked} settings checked, every one is read")
PY
log "promtool: alert rules, their unit tests, the dashboard's queries (k8s/monitoring)"
PROMTOOL="$TOOLS/promtool"
if ! [ -x "$PROMTOOL" ]; then
  # Only the promtool binary out of Debian's prometheus package: nothing is installed or started.
  # A fresh machine may have no package lists yet: fetch them once and retry.
  (cd "$out" && { apt-get download -qq prometheus 2>/dev/null \
      || { as_root apt-get update -qq && apt-get download -qq prometheus; }; } \
    && dpkg-deb -x prometheus_*.deb prometheus)
  mkdir -p "$TOOLS"
  cp "$out/prometheus/usr/bin/promtool" "$PROMTOOL"
fi
"$PROMTOOL" check rules k8s/monitoring/alerts.yaml
(cd k8s/monitoring && "$PROMTOOL" test rules alerts_test.yaml)
# Every dashboard query must parse as PromQL: each becomes a recording rule
# (python3 rather than jq, which a fresh machine may lack).
python3 - k8s/monitoring/dashboard.json "$out/dashboard-rules.json" <<'PY'
import json, sys

def exprs(node):
    if isinstance(node, dict):
        if "expr" in node:
            yield node["expr"]
        for value in node.values():
            yield from exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from exprs(value)

with open(sys.argv[1]) as f:
    dashboard = json.load(f)
rules = [{"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m")}
         for i, e in enumerate(exprs(dashboard))]
with open(sys.argv[2], "w") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
PY
"$PROMTOOL" check rules "$out/dashboard-rules.json"

log "deployment files are valid"
