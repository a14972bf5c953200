"""
The Kubernetes manifests (C{deploy/kubernetes/}) and the C{Containerfile},
checked offline.

  - Every document validates against the Kubernetes 1.30 OpenAPI schemas that
    the C{kubernetes-validate} package ships, in strict mode (unknown fields
    are errors); broken copies of the same documents are rejected by the same
    function, so the check can fail.
  - The sidecar's C{meshdns.yaml} is read by meshdns's own config parser, and
    what the manifests say about it agrees with it: ports, probes, mounts,
    the capture's proxy uid.
  - The node-local C{meshdns.yaml} sets C{mesh.per_client_views}; the rest of
    it is read by meshdns's parser with the per-client keys taken out, so this
    test does not depend on the parser knowing them.
  - meshdns's RBAC grants get, list and watch, and nothing else, on exactly
    the kinds its Kubernetes API source reads (issue 18): Services,
    EndpointSlices, ServiceEntries and Sidecars, and Pods only where
    per-client views need them; no wildcards. Both shapes' configs enable the
    API source with the in-cluster service account, and their pods'
    ServiceAccount is bound to exactly what the shape reads. The same check,
    fed roles with a wildcard, an extra verb or kind, or a missing watch,
    reports each.
  - The optional refresh CronJob's RBAC grants get/list on the resources it
    reads and get/patch on the one ConfigMap, nothing more.
  - The sidecar patch, applied with strategic-merge semantics to the example
    Deployment without its meshdns parts, gives back the example.
  - The C{Containerfile} is checked statically (no image is built here):
    multi-stage, the final stage installs the builder's wheel and no build
    tools, installs the C{kubernetes} extra (the API source's client), runs
    as a non-root user, and has the entrypoint the manifests expect.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import meshdns_plugin
from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
DEPLOY = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = ROOT / "Containerfile"
KUBERNETES_VERSION = "1.30"

#: Files that are patches (no apiVersion or kind), checked by applying them.
PATCHES = {"patches/sidecar.yaml"}

MESHDNS_UID = 1337


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _manifests() -> Iterator[tuple[str, int, dict[str, Any]]]:
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        name = path.relative_to(DEPLOY).as_posix()
        if name in PATCHES:
            continue
        for index, doc in enumerate(_documents(path)):
            yield name, index, doc


MANIFESTS = list(_manifests())


def validate(doc: dict[str, Any]) -> None:
    """
    Validate one document against the Kubernetes API schema, strictly.

    @raise kubernetes_validate.ValidationError: the document is invalid.
    @raise kubernetes_validate.SchemaNotFoundError: no schema for its kind
        (a typo in apiVersion or kind, or a custom resource).
    """
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _find(kind: str, name: str, where: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for file, _, doc in MANIFESTS
        if doc["kind"] == kind
        and doc["metadata"]["name"] == name
        and (where is None or file.startswith(where))
    ]
    assert len(found) == 1, f"{len(found)} {kind} named {name} under {where or 'deploy'}"
    return found[0]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def _embedded_config(shape: str, configmap: str) -> dict[str, Any]:
    return yaml.safe_load(_find("ConfigMap", configmap, shape)["data"]["meshdns.yaml"])


def _load_with_meshdns(raw: dict[str, Any], tmp_path: Path) -> meshdns_plugin.Config:
    path = tmp_path / "meshdns.yaml"
    path.write_text(yaml.safe_dump(raw))
    return meshdns_plugin.loadConfig(path)


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    every = pod.get("initContainers", []) + pod["containers"]
    (container,) = [c for c in every if c["name"] == name]
    return container


def _option(argv: list[str], option: str) -> str:
    for index, word in enumerate(argv):
        if word == option:
            return argv[index + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{option} not in {argv}")


# -- schema validation ------------------------------------------------------


def test_manifests_found() -> None:
    kinds = {doc["kind"] for _, _, doc in MANIFESTS}
    assert {
        "Deployment", "DaemonSet", "ConfigMap", "CronJob", "ServiceAccount", "ClusterRole",
        "ClusterRoleBinding",
    } <= kinds


@pytest.mark.parametrize(
    "doc",
    [doc for _, _, doc in MANIFESTS],
    ids=[f"{file}#{index}-{doc['kind']}" for file, index, doc in MANIFESTS],
)
def test_manifest_validates(doc: dict[str, Any]) -> None:
    validate(doc)


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _drop(path: tuple[Any, ...]) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


_POD = ("spec", "template", "spec")
_BROKEN = {
    "misspelt container field": (
        ("Deployment", "client"),
        _set((*_POD, "initContainers", 1, "readinessProb"), {"httpGet": {"port": 15020}}),
    ),
    "replicas not an integer": (("Deployment", "client"), _set(("spec", "replicas"), "one")),
    "selector missing": (("Deployment", "client"), _drop(("spec", "selector"))),
    "probe port a list": (
        ("DaemonSet", "meshdns-node"),
        _set((*_POD, "containers", 0, "livenessProbe", "httpGet", "port"), [15020]),
    ),
    "hostNetwork a string": (("DaemonSet", "meshdns-node"), _set((*_POD, "hostNetwork"), "yes")),
    "ConfigMap data not strings": (
        ("ConfigMap", "meshdns-config"),
        _set(("data", "meshdns.yaml"), {"listen": {"port": 15053}}),
    ),
    "Role rule verbs missing": (
        ("ClusterRole", "meshdns-refresh"),
        _drop(("rules", 0, "verbs")),
    ),
    "binding subject without a kind": (
        ("ClusterRoleBinding", "meshdns-node-reader"),
        _drop(("subjects", 0, "kind")),
    ),
    "CronJob without a pod template": (
        ("CronJob", "meshdns-refresh"),
        _drop(("spec", "jobTemplate", "spec", "template")),
    ),
}


@pytest.mark.parametrize("case", sorted(_BROKEN))
def test_broken_manifest_rejected(case: str) -> None:
    (kind, name), mutate = _BROKEN[case]
    doc = copy.deepcopy(_find(kind, name))
    validate(doc)
    mutate(doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(doc)


def test_broken_file_rejected(tmp_path: Path) -> None:
    """A whole manifest, as a user might get it wrong, read like the real ones."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "apiVersion: apps/v1\n"
        "kind: DaemonSet\n"
        "metadata: {name: meshdns-node, namespace: kube-system}\n"
        "spec:\n"
        "  selector: {matchLabels: {app: meshdns}}\n"
        "  template:\n"
        "    metadata: {labels: {app: meshdns}}\n"
        "    spec:\n"
        "      hostNetwork: true\n"
        "      containers:\n"
        "        - name: meshdns\n"
        "          image: registry.example.com/meshdns:0.1.0\n"
        "          ports: [{containerPort: '53', protocol: UDP}]\n"
    )
    (doc,) = _documents(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(doc)


def test_unknown_kind_is_not_silently_accepted() -> None:
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate({"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": {"name": "x"}})


# -- the sidecar ------------------------------------------------------------

_SIDECAR_PARTS = {"meshdns-capture", "meshdns"}


def _strategic_merge(base: Any, patch: Any) -> Any:
    """
    What C{kubectl patch} (strategic merge) does with the patch's fields, as
    C{kubectl patch --local} shows it: mappings merge key by key; in lists of
    named items (containers, volumes) an item of an existing name is merged in
    place and new items come first, in the patch's order; anything else is
    replaced.
    """
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _strategic_merge(base[key], value) if key in base else value
        return merged
    named = (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(item, dict) and "name" in item for item in [*base, *patch])
    )
    if named:
        by_name = {item["name"]: item for item in patch}
        old_names = {item["name"] for item in base}
        return [item for item in patch if item["name"] not in old_names] + [
            _strategic_merge(item, by_name[item["name"]]) if item["name"] in by_name else item
            for item in base
        ]
    return patch


def _sidecar_patch() -> dict[str, Any]:
    (patch,) = _documents(DEPLOY / "patches" / "sidecar.yaml")
    return patch


def _example_without_sidecar() -> dict[str, Any]:
    app = copy.deepcopy(_find("Deployment", "client", "sidecar/"))
    pod = app["spec"]["template"]["spec"]
    pod["initContainers"] = [c for c in pod["initContainers"] if c["name"] not in _SIDECAR_PARTS]
    if not pod["initContainers"]:
        del pod["initContainers"]
    pod["volumes"] = [v for v in pod["volumes"] if not v["name"].startswith("meshdns-")]
    if not pod["volumes"]:
        del pod["volumes"]
    # The API source's token: the patch turns the mount on.
    del pod["automountServiceAccountToken"]
    return app


def test_patch_adds_exactly_what_the_example_has() -> None:
    example = _find("Deployment", "client", "sidecar/")
    patch = _sidecar_patch()
    assert set(patch) == {"spec"}, "a patch for any Deployment: no name, kind or apiVersion"

    patched = _strategic_merge(_example_without_sidecar(), patch)
    assert patched == example
    assert _strategic_merge(patched, patch) == example, "patching twice changes nothing"
    validate(patched)


def test_patch_keeps_what_the_application_has() -> None:
    """An application with init containers and volumes of its own keeps them."""
    app = _example_without_sidecar()
    pod = app["spec"]["template"]["spec"]
    pod["initContainers"] = [{"name": "migrate", "image": "busybox:1.37.0", "command": ["true"]}]
    pod["volumes"] = [{"name": "data", "emptyDir": {}}]

    patched = _strategic_merge(app, _sidecar_patch())
    pod = patched["spec"]["template"]["spec"]
    # meshdns first: the application's own init containers get its DNS too.
    assert [c["name"] for c in pod["initContainers"]] == ["meshdns-capture", "meshdns", "migrate"]
    assert [v["name"] for v in pod["volumes"]] == [
        "meshdns-config", "meshdns-entries", "meshdns-run", "data"
    ]
    validate(patched)


def test_sidecar_config_is_valid_for_meshdns(tmp_path: Path) -> None:
    raw = _embedded_config("sidecar/", "meshdns-config")
    config = _load_with_meshdns(raw, tmp_path)
    assert config.admin.port != 0
    # Captured queries keep the pod's IP as their source: they are let in
    # because they arrive on a loopback listener, and nothing else may query.
    assert config.listen.addresses == ("127.0.0.1",)
    assert config.listen.allow == ()


def test_sidecar_agrees_with_its_config(tmp_path: Path) -> None:
    config = _load_with_meshdns(_embedded_config("sidecar/", "meshdns-config"), tmp_path)
    pod = _pod_spec(_find("Deployment", "client", "sidecar/"))
    capture = _container(pod, "meshdns-capture")
    meshdns = _container(pod, "meshdns")

    # Order: the rules first, then meshdns as a native sidecar, before the app.
    names = [c["name"] for c in pod["initContainers"]]
    assert names.index("meshdns-capture") < names.index("meshdns")
    assert meshdns["restartPolicy"] == "Always"

    # The capture: root with NET_ADMIN, sparing meshdns's own uid and gid.
    assert capture["command"][:3] == ["meshdns", "capture", "install"]
    assert capture["securityContext"]["runAsUser"] == 0
    assert {"NET_ADMIN", "NET_RAW"} <= set(capture["securityContext"]["capabilities"]["add"])
    assert "--all" not in capture["command"]
    sc = meshdns["securityContext"]
    assert sc["runAsUser"] == sc["runAsGroup"] == MESHDNS_UID
    assert sc["runAsNonRoot"] is True
    assert int(_option(capture["command"], "--proxy-uid")) == sc["runAsUser"]
    assert int(_option(capture["command"], "--proxy-gid")) == sc["runAsGroup"]

    # Both read the same config file, from the ConfigMap that holds it.
    for container in (capture, meshdns):
        argv = container.get("command", []) + container.get("args", [])
        _assert_config_mounted(pod, container, _option(argv, "--config"), "sidecar/")

    # meshdns serves where capture sends: 127.0.0.1, on listen.port (which
    # the capture reads from the same config).
    assert "127.0.0.1" in config.listen.addresses
    assert "--port" not in capture["command"]
    assert [p["containerPort"] for p in meshdns["ports"]] == [config.admin.port]

    # Probes: /readyz and /healthz on the admin port; the kubelet reaches the
    # pod IP, so the admin endpoint must listen beyond loopback.
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"),
                        ("livenessProbe", "/healthz")):
        assert meshdns[probe]["httpGet"] == {"path": path, "port": config.admin.port}
    assert ipaddress.ip_address(config.admin.address).is_unspecified

    # Entries: the meshdns-entries ConfigMap, mounted as a directory (no
    # subPath, so the kubelet's updates reach it).
    _assert_entries_mounted(pod, meshdns, config.entries, "sidecar/")

    # The application does not run as meshdns's uid or gid (its DNS would
    # escape the capture).
    for app in pod["containers"]:
        app_sc = app.get("securityContext", {})
        assert MESHDNS_UID not in (app_sc.get("runAsUser"), app_sc.get("runAsGroup"))


def _assert_config_mounted(
    pod: dict[str, Any], container: dict[str, Any], path: str, shape: str
) -> None:
    folder, key = path.rsplit("/", 1)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    assert "subPath" not in mount
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = _find("ConfigMap", volume["configMap"]["name"], shape)
    assert key in configmap["data"]


def _assert_entries_mounted(
    pod: dict[str, Any], container: dict[str, Any], entries: tuple[str, ...], shape: str
) -> None:
    (folder,) = entries
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    assert "subPath" not in mount
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = _find("ConfigMap", volume["configMap"]["name"], shape)
    assert configmap["metadata"]["name"] == "meshdns-entries"


@pytest.mark.parametrize("shape", ["sidecar/", "node-local/"])
def test_initial_entries_load(shape: str, tmp_path: Path) -> None:
    """The empty entries ConfigMap, as mounted, is a valid (empty) table."""
    configmap = _find("ConfigMap", "meshdns-entries", shape)
    entries = tmp_path / "entries"
    entries.mkdir()
    for key, text in configmap["data"].items():
        (entries / key).write_text(text)
    config = _load_with_meshdns({"entries": [str(entries)]}, tmp_path)
    meshdns_plugin.meshAuthority(config)


# -- node-local -------------------------------------------------------------


def test_node_local_config(tmp_path: Path) -> None:
    raw = _embedded_config("node-local/", "meshdns-node-config")
    assert raw["mesh"]["per_client_views"] is True
    # The per-client keys are for a parser that knows them; the rest must be
    # valid for meshdns as it is.
    for key in ("per_client_views", "client_namespaces"):
        raw["mesh"].pop(key, None)
    config = _load_with_meshdns(raw, tmp_path)

    (address,) = config.listen.addresses
    assert ipaddress.ip_address(address).is_link_local
    assert config.listen.port == 53, "resolv.conf nameservers have no port"
    assert any(ipaddress.ip_address(address) in network for network in config.listen.allow)
    assert config.upstream.servers, "upstream is the cluster DNS Service, not resolv.conf"
    assert all(server != address for server, _ in config.upstream.servers)

    daemonset = _find("DaemonSet", "meshdns-node", "node-local/")
    pod = _pod_spec(daemonset)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "Default"

    # The init container puts exactly that address on the node.
    (init,) = pod["initContainers"]
    script = init["command"][-1]
    assert re.search(rf"ip addr replace {re.escape(address)}/32 dev meshdns0", script)
    assert "type dummy" in script
    assert init["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]

    meshdns = _container(pod, "meshdns")
    argv = meshdns["command"]
    assert argv[:3] == ["twistd", "-n", "--pidfile="]
    # Port 53 is bound as root, then twistd switches to 1337 for good.
    twistd_options = argv[: argv.index("meshdns")]
    assert int(_option(twistd_options, "--uid")) == MESHDNS_UID
    assert int(_option(twistd_options, "--gid")) == MESHDNS_UID
    assert "NET_BIND_SERVICE" in meshdns["securityContext"]["capabilities"]["add"]
    _assert_config_mounted(pod, meshdns, _option(argv, "--config"), "node-local/")
    _assert_entries_mounted(pod, meshdns, config.entries, "node-local/")

    # hostNetwork: the probes ask the node's loopback, where admin listens.
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert meshdns[probe]["httpGet"] == {
            "host": config.admin.address, "path": path, "port": config.admin.port
        }


# -- the Kubernetes API source's RBAC ---------------------------------------

#: What the API source reads, by (API group, resource), as issue 18 lists it:
#: Services, EndpointSlices (discovery.k8s.io), ServiceEntries and Sidecars
#: (networking.istio.io) ...
API_SOURCE_READS = {
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("networking.istio.io", "serviceentries"),
    ("networking.istio.io", "sidecars"),
}
#: ... and Pods, only where per-client views need them (node-local).
PER_CLIENT_READS = {("", "pods")}
#: A reflector lists then watches; get is the third read verb.
API_SOURCE_VERBS = {"get", "list", "watch"}

Grant = tuple[str, str, str]


def _granted(reads: set[tuple[str, str]]) -> set[Grant]:
    return {(group, resource, verb) for group, resource in reads for verb in API_SOURCE_VERBS}


def rbac_problems(roles: list[dict[str, Any]], expected: set[Grant]) -> list[str]:
    """
    What is wrong with the roles meshdns runs with; [] if nothing.

    @param roles: the ClusterRoles and Roles bound to meshdns's account.
    @param expected: (API group, resource, verb) it must be granted, exactly.
    """
    problems = []
    granted: set[Grant] = set()
    for role in roles:
        name = role["metadata"]["name"]
        for rule in role.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                if "*" in rule.get(field, []):
                    problems.append(f"{name}: a wildcard in {field}")
            for field in ("resourceNames", "nonResourceURLs"):
                if field in rule:
                    problems.append(f"{name}: {field} in a rule")
            if set(rule["verbs"]) != API_SOURCE_VERBS:
                problems.append(f"{name}: verbs {sorted(rule['verbs'])}, not get, list, watch")
            granted |= {
                (group, resource, verb)
                for group in rule.get("apiGroups", [])
                for resource in rule.get("resources", [])
                for verb in rule["verbs"]
            }
    problems += [f"not granted: {grant}" for grant in sorted(expected - granted)]
    problems += [f"granted beyond need: {grant}" for grant in sorted(granted - expected)]
    return problems


def _meshdns_docs(kind: str) -> list[dict[str, Any]]:
    """meshdns's own documents of a kind: the optional refresh's left out."""
    return [doc for file, _, doc in MANIFESTS
            if doc["kind"] == kind and not file.startswith(REFRESH)]


def _roles_bound_to(account: tuple[str, str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The roles bound to a ServiceAccount, and the kinds of the bindings."""
    roles, binding_kinds = [], []
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for binding in _meshdns_docs(kind):
            subjects = {(s["kind"], s.get("namespace"), s["name"]) for s in binding["subjects"]}
            if ("ServiceAccount", *account) not in subjects:
                continue
            ref = binding["roleRef"]
            assert ref["apiGroup"] == "rbac.authorization.k8s.io", ref
            roles.append(_find(ref["kind"], ref["name"]))
            binding_kinds.append(kind)
    return roles, binding_kinds


def test_api_source_rbac_is_exactly_what_it_reads() -> None:
    """Every role meshdns has, together: get, list, watch on its kinds, nothing else."""
    roles = _meshdns_docs("ClusterRole") + _meshdns_docs("Role")
    assert rbac_problems(roles, _granted(API_SOURCE_READS | PER_CLIENT_READS)) == []


_SHAPES = {
    # shape: (its workload, its config ConfigMap, what it reads)
    "sidecar/": (("Deployment", "client"), "meshdns-config", API_SOURCE_READS),
    "node-local/": (
        ("DaemonSet", "meshdns-node"), "meshdns-node-config", API_SOURCE_READS | PER_CLIENT_READS
    ),
}


@pytest.mark.parametrize("shape", sorted(_SHAPES))
def test_shape_reads_the_api_as_a_bound_account(shape: str, tmp_path: Path) -> None:
    (kind, name), configmap, reads = _SHAPES[shape]
    config = _load_with_meshdns(_embedded_config(shape, configmap), tmp_path)
    # The API source, with the pod's own service account (no kubeconfig)
    # over every namespace.
    assert config.kubernetes.enabled is True
    assert config.kubernetes.kubeconfig is None
    assert config.kubernetes.namespaces == ()
    assert config.mesh.per_client_views is (PER_CLIENT_READS <= reads)

    workload = _find(kind, name, shape)
    pod = _pod_spec(workload)
    assert pod["automountServiceAccountToken"] is True
    # The sidecar's Deployment has no namespace of its own: it is applied to
    # the one its config names.
    namespace = workload["metadata"].get("namespace", config.mesh.namespace)
    account = (namespace, pod["serviceAccountName"])
    (service_account,) = [
        d for d in _meshdns_docs("ServiceAccount")
        if (d["metadata"].get("namespace", config.mesh.namespace), d["metadata"]["name"])
        == account
    ]
    assert service_account.get("automountServiceAccountToken", True) is True

    roles, binding_kinds = _roles_bound_to(account)
    # Every namespace is watched, so the grants must be cluster-wide.
    assert binding_kinds and set(binding_kinds) == {"ClusterRoleBinding"}
    assert rbac_problems(roles, _granted(reads)) == []


def test_sidecar_patch_mounts_the_applications_token() -> None:
    """The patch runs meshdns as the application's own ServiceAccount."""
    pod = _sidecar_patch()["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert "serviceAccountName" not in pod


def _reader(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"metadata": {"name": "meshdns-reader"}, "rules": rules}]


_ALL_READS = [
    {"apiGroups": [""], "resources": ["services", "pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["networking.istio.io"], "resources": ["serviceentries", "sidecars"],
     "verbs": ["get", "list", "watch"]},
]


def _changed(index: int, **fields: Any) -> list[dict[str, Any]]:
    rules = copy.deepcopy(_ALL_READS)
    rules[index].update(fields)
    return rules


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        (_changed(0, verbs=["*"]), "a wildcard in verbs"),
        (_changed(2, apiGroups=["*"]), "a wildcard in apiGroups"),
        (_changed(1, resources=["*"]), "a wildcard in resources"),
        (_changed(0, verbs=["get", "list"]), "not granted: ('', 'pods', 'watch')"),
        (_changed(1, verbs=["get", "list", "watch", "create"]), "verbs ['create', 'get'"),
        (_changed(0, resources=["services", "pods", "secrets"]),
         "granted beyond need: ('', 'secrets', 'get')"),
        (_changed(2, resources=["serviceentries"]),
         "not granted: ('networking.istio.io', 'sidecars', 'get')"),
        (_changed(0, resourceNames=["kubernetes"]), "resourceNames in a rule"),
        (_ALL_READS + [{"nonResourceURLs": ["/version"], "verbs": ["get", "list", "watch"]}],
         "nonResourceURLs in a rule"),
    ],
    ids=["verb-wildcard", "group-wildcard", "resource-wildcard", "no-watch", "create",
         "secrets", "no-sidecars", "resource-names", "non-resource-urls"],
)
def test_rbac_check_catches(rules: list[dict[str, Any]], problem: str) -> None:
    expected = _granted(API_SOURCE_READS | PER_CLIENT_READS)
    assert rbac_problems(_reader(_ALL_READS), expected) == []
    problems = rbac_problems(_reader(rules), expected)
    assert any(problem in p for p in problems), problems


# -- the optional refresh CronJob and its RBAC ------------------------------

REFRESH = "optional/refresh/"

READ_ONLY = {"get", "list"}
ALLOWED_READS = {
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("networking.istio.io", "serviceentries"),
    ("networking.istio.io", "sidecars"),
}


def _cronjob_env(cronjob: dict[str, Any]) -> dict[str, str]:
    (container,) = _pod_spec(cronjob)["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def test_refresh_rbac_is_minimal() -> None:
    docs = [doc for file, _, doc in MANIFESTS if file.startswith(REFRESH)]
    (cronjob,) = [d for d in docs if d["kind"] == "CronJob"]
    pod = _pod_spec(cronjob)
    account = (cronjob["metadata"]["namespace"], pod["serviceAccountName"])
    env = _cronjob_env(cronjob)

    # The ClusterRole: get/list on the listed resources, no wildcards.
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    granted = set()
    for rule in cluster_role["rules"]:
        assert set(rule["verbs"]) <= READ_ONLY, rule
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        granted |= {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted <= ALLOWED_READS
    # ... and it covers what the CronJob reads.
    for resource in env["RESOURCES"].split(","):
        plural, _, group = resource.partition(".")
        assert (group, plural) in granted, resource

    # Bound to the CronJob's ServiceAccount only.
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
        "name": cluster_role["metadata"]["name"],
    }
    assert [(s["kind"], s["namespace"], s["name"]) for s in binding["subjects"]] == [
        ("ServiceAccount", *account)
    ]
    (sa,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert (sa["metadata"]["namespace"], sa["metadata"]["name"]) == account

    # Roles: get and patch (update allowed too) on the one ConfigMap, in
    # exactly the namespaces the CronJob writes to.
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d
             for d in docs if d["kind"] == "Role"}
    for role in roles.values():
        for rule in role["rules"]:
            assert rule["apiGroups"] == [""] and rule["resources"] == ["configmaps"], rule
            assert rule["resourceNames"] == ["meshdns-entries"], rule
            assert set(rule["verbs"]) <= {"get", "update", "patch"}, rule
    targets = set(env["TARGET_NAMESPACES"].split())
    assert {ns for ns, _ in roles} == targets
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert {b["metadata"]["namespace"] for b in bindings} == targets
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        assert (b["metadata"]["namespace"], b["roleRef"]["name"]) in roles
        assert [(s["kind"], s["namespace"], s["name"]) for s in b["subjects"]] == [
            ("ServiceAccount", *account)
        ]

    # Nothing else in the refresh manifests grants anything.
    assert {d["kind"] for d in docs} == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "CronJob"
    }


def test_refresh_writes_the_entries_configmaps() -> None:
    cronjob = _find("CronJob", "meshdns-refresh")
    env = _cronjob_env(cronjob)
    (container,) = _pod_spec(cronjob)["containers"]
    script = container["command"][-1]
    assert 'kubectl get "$RESOURCES" --all-namespaces -o yaml' in script
    assert "patch configmap meshdns-entries" in script
    assert set(env["RESOURCES"].split(",")) == {
        "serviceentries.networking.istio.io", "services", "endpointslices.discovery.k8s.io"
    }
    # Every namespace it writes to has the ConfigMap in one of the shapes.
    holders = {
        doc["metadata"].get("namespace", "default")
        for _, _, doc in MANIFESTS
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "meshdns-entries"
    }
    assert set(env["TARGET_NAMESPACES"].split()) == holders
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


# -- images -----------------------------------------------------------------


def _all_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for file, _, doc in MANIFESTS:
        if doc["kind"] in ("Deployment", "DaemonSet", "CronJob"):
            pod = _pod_spec(doc)
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield file, container
    for container in _sidecar_patch()["spec"]["template"]["spec"]["initContainers"]:
        yield "patches/sidecar.yaml", container


def test_images_are_pinned() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    meshdns_images = set()
    for file, container in _all_containers():
        image = container["image"]
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag != "latest", f"{file}: {image} is not pinned"
        if name.endswith("/meshdns"):
            meshdns_images.add(image)
    assert len(meshdns_images) == 1, meshdns_images
    assert meshdns_images.pop().endswith(f"/meshdns:{version}")


# -- the Containerfile ------------------------------------------------------

#: Packages and commands that have no place in the final image.
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3?-dev|libc6?-dev|git|"
    r"hatch(ling)?|setuptools|python -m build|pip wheel)\b"
)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuations joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), " ".join(rest.split())))
    return pairs


def _stages(text: str) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    for instruction, args in _instructions(text):
        if instruction == "FROM":
            words = args.split()
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"image": words[0], "alias": alias, "body": []})
        else:
            assert stages, f"{instruction} before FROM"
            stages[-1]["body"].append((instruction, args))
    return stages


def containerfile_problems(text: str) -> list[str]:
    """What is wrong with a Containerfile by this project's rules; [] if nothing."""
    stages = _stages(text)
    if len(stages) < 2:
        return ["not multi-stage: the wheel must be built in a stage of its own"]
    problems = []
    builder, final = stages[0], stages[-1]
    for stage in (builder, final):
        if stage["image"] != "python:3.11-slim":
            problems.append(f"stage from {stage['image']}, not python:3.11-slim")
    builds = " ".join(a for i, a in builder["body"] if i == "RUN")
    if not re.search(r"\bpip wheel\b|\bpython3? -m build\b", builds):
        problems.append("the builder stage does not build a wheel")

    body = final["body"]
    runs = [args for instruction, args in body if instruction == "RUN"]
    for instruction, args in body:
        if instruction in ("COPY", "ADD") and "--from=" not in args:
            problems.append(f"the final stage copies from the build context: {args}")
    for args in runs:
        tool = BUILD_TOOLS.search(re.sub(r"pip uninstall -y [\w -]+", "", args))
        if tool:
            problems.append(f"build tool {tool.group(0)!r} in the final stage")
    installs = [a for a in runs if re.search(r"\bpip install\b", a)]
    wheel_installs = [
        a for a in installs
        if f"from={builder['alias']}" in a and "--no-index" in a and re.search(r"\.whl\b", a)
    ]
    if not installs or len(wheel_installs) != len(installs):
        problems.append("the final stage must pip install the builder's wheel, --no-index")
    # The shapes in deploy/kubernetes use the Kubernetes API source, whose
    # client is the `kubernetes` extra: built into /wheels, installed with it.
    if not re.search(r"\bpip wheel\b.*\[kubernetes\]", builds):
        problems.append("the builder stage does not build the kubernetes extra's wheels")
    if not any(re.search(r"\.whl\b.*\[kubernetes\]", a) for a in wheel_installs):
        problems.append("the final stage does not install the kubernetes extra")
    if not any("--no-cache-dir" in a for a in installs) and not any(
        i == "ENV" and "PIP_NO_CACHE_DIR=1" in a for i, a in body
    ):
        problems.append("pip keeps its cache in the final image")
    apt = " ".join(a for a in runs if "apt-get install" in a)
    for package in ("iptables", "iproute2"):
        if not re.search(rf"\b{package}\b", apt):
            problems.append(f"{package} is not installed in the final image")
    if "rm -rf /var/lib/apt/lists" not in apt:
        problems.append("apt lists left in the final image")

    users = [args for instruction, args in body if instruction == "USER"]
    if not users:
        problems.append("no USER: the image runs as root")
    else:
        user, _, group = users[-1].partition(":")
        if user in ("0", "root") or group in ("0", "root"):
            problems.append(f"USER {users[-1]} is root")
        elif (user, group) != (str(MESHDNS_UID), str(MESHDNS_UID)):
            problems.append(f"USER {users[-1]}, not {MESHDNS_UID}:{MESHDNS_UID}")
    entrypoints = [args for instruction, args in body if instruction == "ENTRYPOINT"]
    if not entrypoints or json.loads(entrypoints[-1]) != [
        "twistd", "-n", "--pidfile=", "meshdns"
    ]:
        problems.append("ENTRYPOINT is not [\"twistd\", \"-n\", \"--pidfile=\", \"meshdns\"]")
    return problems


def test_containerfile_follows_the_rules() -> None:
    assert containerfile_problems(CONTAINERFILE.read_text()) == []


def _without(text: str, pattern: str, replacement: str = "") -> str:
    changed = re.sub(pattern, replacement, text, flags=re.MULTILINE)
    assert changed != text, pattern
    return changed


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: "FROM python:3.11-slim\n" + t.split("FROM python:3.11-slim\n", 1)[1],
         "not multi-stage"),
        (lambda t: _without(t, r"^USER 1337:1337$", "USER 0"), "is root"),
        (lambda t: _without(t, r"^USER 1337:1337$"), "no USER"),
        (lambda t: _without(t, r"iptables iproute2", "iproute2"), "iptables is not installed"),
        (lambda t: _without(t, r"iptables iproute2", "iptables iproute2 build-essential"),
         "build tool 'build-essential'"),
        (lambda t: _without(t, r"/wheels/meshdns-\*\.whl", "meshdns"), "builder's wheel"),
        (lambda t: t + "COPY meshdns_plugin /app/meshdns_plugin\n",
         "copies from the build context"),
        (lambda t: _without(t, r'"--pidfile=", '), "ENTRYPOINT"),
        (lambda t: _without(t, r"'\.\[kubernetes\]'", "."), "build the kubernetes extra"),
        (lambda t: _without(t, r'"\$1\[kubernetes\]"', '"$1"'), "install the kubernetes extra"),
    ],
    ids=["single-stage", "root", "no-user", "no-iptables", "compiler", "from-index",
         "copy-source", "entrypoint", "no-extra-built", "no-extra-installed"],
)
def test_containerfile_check_catches(change: Any, problem: str) -> None:
    problems = containerfile_problems(change(CONTAINERFILE.read_text()))
    assert any(problem in p for p in problems), problems


def test_build_context_has_what_the_builder_copies() -> None:
    """.dockerignore allow-lists the context; every COPY source must be on it."""
    allowed = {
        line[1:].strip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    builder = _stages(CONTAINERFILE.read_text())[0]
    for instruction, args in builder["body"]:
        if instruction == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert source.strip("./") in allowed, source
                assert (ROOT / source).exists(), source
