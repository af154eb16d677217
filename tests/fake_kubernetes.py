"""Fakes at the Kubernetes boundary, on 127.0.0.1: an API server for the deployer and the Service it smoke-tests.

`FakeApiServer` answers the calls the deployer may make (read and patch a Deployment, list ReplicaSets)
over HTTP, so the real `kubernetes` client is exercised end to end: URLs, query parameters, the patch
content types, serialisation of request bodies and deserialisation of responses into `kubernetes.client`
models. Objects are the JSON the API server returns for apps/v1 (server-side defaults, uid,
resourceVersion, generation, the revision annotations, ownerReferences, status and conditions as
`kubectl get -o json` shows them), starting from the real deploy/k8s/serving-deployment.yaml.

`FakeCluster` plays the deployment controller one step per read of the Deployment: a new template is
first unobserved, then partly rolled out, then complete, unless the version's behaviour says the new
pods never become available ("stuck") or the progress deadline passes ("deadline"). Rolling back to a
template an older ReplicaSet already has reuses that ReplicaSet with a new revision, as the controller
does. Every request is authorised against the deployer Role of deploy/k8s/deployer-rbac.yaml (403
otherwise), like the API server's RBAC authoriser, so a call the Role does not grant fails the test.

`FakeModelServer` stands in for the Service in front of the serving pods: /health, /ready, /model and
/predict/batch shaped as ml/serving answers them, for whichever template finished rolling out last.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
NAMESPACE = "ml"
DEPLOYMENT_UID = "6f1c2a4e-1d2b-4c3d-9e8f-0a1b2c3d4e5f"
SMP = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# Strategic-merge keys of the lists a pod template holds (from the Kubernetes API's patchMergeKey tags).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}
TS = "2026-01-05T09:00:00Z"


def manifest(file: str, kind: str) -> dict[str, Any]:
    """The first document of `kind` in deploy/k8s/<file>."""
    for doc in yaml.safe_load_all((K8S / file).read_text()):
        if doc and doc.get("kind") == kind:
            return doc
    raise LookupError(f"no {kind} in {file}")


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def canonical_template(template: dict[str, Any]) -> str:
    """A pod template as the controller compares them: without the pod-template-hash label."""
    template = _drop_none(copy.deepcopy(template))
    template.get("metadata", {}).get("labels", {}).pop("pod-template-hash", None)
    return json.dumps(template, sort_keys=True)


def with_server_defaults(template: dict[str, Any]) -> dict[str, Any]:
    """The defaults the API server fills into a pod template it stores."""
    template = copy.deepcopy(template)
    template.setdefault("metadata", {})["creationTimestamp"] = None
    spec = template["spec"]
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    for container in spec["containers"]:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                container[probe].setdefault("timeoutSeconds", 1)
                container[probe].setdefault("successThreshold", 1)
                container[probe]["httpGet"].setdefault("scheme", "HTTP")
    return template


def template_env(template: dict[str, Any], container: str = "serving") -> dict[str, str]:
    for c in template["spec"]["containers"]:
        if c["name"] == container:
            return {e["name"]: e.get("value") for e in c.get("env", [])}
    return {}


def strategic_merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Strategic merge patch, for the fields a pod template has: maps merge, null deletes, the lists
    in MERGE_KEYS merge item by item on their key, other lists are replaced."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            strategic_merge(target[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(target.get(key), list):
            merge_key = MERGE_KEYS[key]
            for item in value:
                match = next((i for i in target[key] if i.get(merge_key) == item.get(merge_key)), None)
                if match is None:
                    target[key].append(copy.deepcopy(item))
                else:
                    strategic_merge(match, item)
        else:
            target[key] = copy.deepcopy(value)


class PatchConflict(Exception):
    """A JSON patch `test` op did not hold (the API server answers 422)."""


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 test/add/replace/remove on a copy of doc."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if op["op"] == "test":
            if parent.get(last) != op["value"]:
                raise PatchConflict(f"testing value {op['path']} failed")
        elif op["op"] == "replace":
            if last not in parent:
                raise PatchConflict(f"replace operation does not apply: doc is missing path: {op['path']}")
            parent[last] = copy.deepcopy(op["value"])
        elif op["op"] == "add":
            parent[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del parent[last]
        else:
            raise PatchConflict(f"unsupported op {op['op']}")
    return doc


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": status, "lastUpdateTime": TS, "lastTransitionTime": TS, "reason": reason,
            "message": message}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any
    verb: str
    resource: str
    status: int = 0


class FakeCluster:
    """One serving Deployment (deploy/k8s/serving-deployment.yaml) and its ReplicaSets, as the API
    server stores them, with a deployment controller that advances one step per read.

    :param behaviors: CT_MODEL_VERSION of a template -> "ok" | "stuck" | "deadline" (default "ok")
    """

    def __init__(self, behaviors: dict[str, str] | None = None, replicas: int = 2,
                 role: dict[str, Any] | None = None) -> None:
        self.behaviors = behaviors or {}
        self.replicas = replicas
        self.role = role or manifest("deployer-rbac.yaml", "Role")
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        base = manifest("serving-deployment.yaml", "Deployment")
        self.deployment = {
            "kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": {"name": base["metadata"]["name"], "namespace": NAMESPACE, "uid": DEPLOYMENT_UID,
                         "resourceVersion": "1000", "generation": 1, "creationTimestamp": TS,
                         "labels": {**base["metadata"]["labels"], "app.kubernetes.io/part-of": "ct"},
                         "annotations": {"deployment.kubernetes.io/revision": "1"}},
            "spec": {**copy.deepcopy(base["spec"]), "replicas": replicas,
                     "template": with_server_defaults(base["spec"]["template"])},
            "status": {},
        }
        self.replicasets: list[dict[str, Any]] = []
        # Another Deployment's ReplicaSet matching the same selector (a canary): never a rollback target.
        stray = copy.deepcopy(self.deployment["spec"]["template"])
        for e in stray["spec"]["containers"][0]["env"]:
            if e["name"] == "CT_MODEL_URI":
                e["value"] = "models:/employee-attrition/99"
        self._add_replicaset(stray, 99, owner=("ct-serving-canary", "0badc0de-0000-4000-8000-000000000000"))
        self._add_replicaset(self.deployment["spec"]["template"], 1)
        self.progress = 3
        self.behavior = "ok"
        self.serving = copy.deepcopy(self.deployment["spec"]["template"])
        self._set_status()
        #: other Deployments created through the API (a canary): name -> [object, reads so far]
        self.created: dict[str, list[Any]] = {}

    # ---- the controller -----------------------------------------------------------------------

    @property
    def template(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]

    def _add_replicaset(self, template: dict[str, Any], revision: int,
                        owner: tuple[str, str] = ("ct-serving", DEPLOYMENT_UID)) -> dict[str, Any]:
        pod_hash = hashlib.sha256(canonical_template(template).encode()).hexdigest()[:10]
        template = copy.deepcopy(template)
        template["metadata"].setdefault("labels", {})["pod-template-hash"] = pod_hash
        rs = {
            "kind": "ReplicaSet", "apiVersion": "apps/v1",
            "metadata": {"name": f"{owner[0]}-{pod_hash}", "namespace": NAMESPACE,
                         "uid": f"{pod_hash[:8]}-0000-4000-8000-{len(self.replicasets):012d}",
                         "resourceVersion": str(2000 + len(self.replicasets)), "generation": 1,
                         "creationTimestamp": TS, "labels": dict(template["metadata"]["labels"]),
                         "annotations": {"deployment.kubernetes.io/desired-replicas": str(self.replicas),
                                         "deployment.kubernetes.io/max-replicas": str(self.replicas + 1),
                                         "deployment.kubernetes.io/revision": str(revision)},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": owner[0],
                                              "uid": owner[1], "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"replicas": 0,
                     "selector": {"matchLabels": {**self.deployment["spec"]["selector"]["matchLabels"],
                                                  "pod-template-hash": pod_hash}},
                     "template": template},
            "status": {"replicas": 0, "observedGeneration": 1},
        }
        self.replicasets.append(rs)
        return rs

    def _revision(self, rs: dict[str, Any]) -> int:
        return int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"])

    def _owned(self) -> list[dict[str, Any]]:
        return [rs for rs in self.replicasets if rs["metadata"]["ownerReferences"][0]["uid"] == DEPLOYMENT_UID]

    def _start_rollout(self) -> None:
        self.deployment["metadata"]["generation"] += 1
        revision = max(self._revision(rs) for rs in self._owned()) + 1
        key = canonical_template(self.template)
        rs = next((r for r in self._owned() if canonical_template(r["spec"]["template"]) == key), None)
        if rs is None:
            self._add_replicaset(self.template, revision)
        else:  # a rollback to an older template: the controller reuses its ReplicaSet under a new revision
            rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = str(revision)
        self.deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = str(revision)
        self.progress = 0
        self.behavior = self.behaviors.get(template_env(self.template).get("CT_MODEL_VERSION") or "", "ok")

    def _set_status(self) -> None:
        generation = self.deployment["metadata"]["generation"]
        n = self.replicas
        available = _condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        if self.progress == 0:  # the controller has not seen the new template yet: the old status stays
            self.deployment["status"]["observedGeneration"] = generation - 1
            return
        rs_name = f"ReplicaSet \"ct-serving-{self._current_hash()}\""
        if self.behavior == "deadline" and self.progress >= 2:
            status = {"replicas": n + 1, "updatedReplicas": 1, "readyReplicas": n, "availableReplicas": n,
                      "unavailableReplicas": 1, "conditions": [available, _condition(
                          "Progressing", "False", "ProgressDeadlineExceeded", f"{rs_name} has timed out progressing.")]}
        elif self.behavior in ("stuck", "deadline") or self.progress == 1:
            status = {"replicas": n + 1, "updatedReplicas": 1, "readyReplicas": n, "availableReplicas": n,
                      "unavailableReplicas": 1, "conditions": [available, _condition(
                          "Progressing", "True", "ReplicaSetUpdated", f"{rs_name} is progressing.")]}
        elif self.progress == 2:
            status = {"replicas": n + 1, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
                      "conditions": [available, _condition(
                          "Progressing", "True", "ReplicaSetUpdated", f"{rs_name} is progressing.")]}
        else:
            status = {"replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
                      "conditions": [available, _condition(
                          "Progressing", "True", "NewReplicaSetAvailable", f"{rs_name} has successfully progressed.")]}
            self.serving = copy.deepcopy(self.template)
        self.deployment["status"] = {"observedGeneration": generation, **status}

    def _current_hash(self) -> str:
        key = canonical_template(self.template)
        for rs in self._owned():
            if canonical_template(rs["spec"]["template"]) == key:
                return rs["metadata"]["labels"]["pod-template-hash"]
        return "unknown"

    def _bump(self) -> None:
        self.deployment["metadata"]["resourceVersion"] = str(int(self.deployment["metadata"]["resourceVersion"]) + 1)

    # ---- the API ------------------------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        """The Deployment as it is now; the controller then takes one step."""
        self._set_status()
        doc = copy.deepcopy(self.deployment)
        if self.progress < 3:
            self.progress += 1
        return doc

    def patch(self, content_type: str, body: Any) -> dict[str, Any]:
        before = canonical_template(self.template)
        if content_type == SMP:
            patched = copy.deepcopy(self.deployment)
            strategic_merge(patched, body)
        elif content_type == JSON_PATCH:
            patched = json_patch(self.deployment, body)
        else:
            raise ValueError(content_type)
        self.deployment = patched
        self._bump()
        if canonical_template(self.template) != before:
            self._start_rollout()
            self._set_status()
        return copy.deepcopy(self.deployment)

    def list_replicasets(self, selector: str) -> dict[str, Any]:
        wanted = dict(pair.split("=", 1) for pair in selector.split(",") if pair)
        items = [copy.deepcopy(rs) for rs in self.replicasets
                 if all(rs["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
        return {"kind": "ReplicaSetList", "apiVersion": "apps/v1", "metadata": {"resourceVersion": "3000"},
                "items": items}

    def allowed(self, verb: str, resource: str, name: str | None) -> bool:
        """RBAC: some rule of the Role grants verb on resource (and on this name, if it lists names)."""
        for rule in self.role["rules"]:
            if "apps" in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"] and \
                    (not rule.get("resourceNames") or (name is not None and name in rule["resourceNames"])):
                return True
        return False

    def create(self, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST a Deployment: stored with the server's metadata; 409 when the name exists."""
        name = doc["metadata"]["name"]
        if name in self.created or name == self.deployment["metadata"]["name"]:
            return 409, _status(409, "AlreadyExists", f'deployments.apps "{name}" already exists')
        stored = copy.deepcopy(doc)
        stored["metadata"] |= {"uid": f"c0ffee00-0000-4000-8000-{len(self.created):012d}", "generation": 1,
                               "resourceVersion": "5000", "creationTimestamp": TS}
        stored["spec"]["template"] = with_server_defaults(stored["spec"]["template"])
        stored["status"] = {}
        self.created[name] = [stored, 0]
        return 201, copy.deepcopy(stored)

    def read_created(self, name: str) -> dict[str, Any]:
        """A created Deployment: unobserved at the first read, then available (unless its version is "stuck")."""
        entry = self.created[name]
        doc, reads = entry
        entry[1] += 1
        n = doc["spec"]["replicas"]
        version = template_env(doc["spec"]["template"]).get("CT_MODEL_VERSION") or ""
        if reads >= 1:
            ready = 0 if self.behaviors.get(version) == "stuck" else n
            doc["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": ready,
                             "availableReplicas": ready}
        return copy.deepcopy(doc)

    def served_env(self) -> dict[str, str]:
        return template_env(self.serving)

    def calls(self) -> list[tuple[str, str]]:
        return [(r.verb, r.resource) for r in self.requests]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


_PATH = re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/(?P<resource>deployments|replicasets)"
                   r"(?:/(?P<name>[^/]+))?$")


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One segment per response (headers and body buffered, flushed together), no Nagle: no delayed-ACK stalls.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, doc: Any) -> None:
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None


class FakeApiServer(_Server):
    """The Kubernetes API for one FakeCluster (swap `cluster` to start a new scenario)."""

    def __init__(self, cluster: FakeCluster | None = None) -> None:
        self.cluster = cluster or FakeCluster()
        super().__init__(_ApiHandler)


class _ApiHandler(_Handler):
    def _handle(self) -> None:
        api: FakeApiServer = self.server.owner  # type: ignore[attr-defined]
        cluster = api.cluster
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        body = self._body() if self.command in ("PATCH", "POST") else None
        match = _PATH.match(url.path)
        content_type = (self.headers.get("Content-Type") or "").split(";")[0] or None
        if match is None:
            self._send(404, _status(404, "NotFound", f"the server could not find the requested resource ({url.path})"))
            return
        name, resource = match["name"], match["resource"]
        verb = {"GET": "get" if name else "list", "PATCH": "patch", "POST": "create"}.get(self.command,
                                                                                       self.command.lower())
        request = Request(self.command, url.path, query, content_type, body, verb, resource)
        with cluster.lock:
            cluster.requests.append(request)
            request.status, doc = self._answer(cluster, request, match["ns"], name)
        self._send(request.status, doc)

    def _answer(self, cluster: FakeCluster, request: Request, namespace: str, name: str | None) -> tuple[int, Any]:
        who = 'User "system:serviceaccount:ml:ct-deployer"'
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            return 401, _status(401, "Unauthorized", "Unauthorized")
        if namespace != NAMESPACE or not cluster.allowed(request.verb, request.resource, name):
            return 403, _status(403, "Forbidden", f'{request.resource}.apps "{name or ""}" is forbidden: {who} cannot '
                                                  f'{request.verb} resource "{request.resource}" in API group "apps" '
                                                  f'in the namespace "{namespace}"')
        if request.resource == "replicasets":
            if request.verb != "list":
                return 405, _status(405, "MethodNotAllowed", "not served by this fake")
            return 200, cluster.list_replicasets(request.query.get("labelSelector", [""])[0])
        if request.verb == "create":
            return cluster.create(request.body)
        if name in cluster.created:
            if request.verb == "delete":
                cluster.created.pop(name)
                return 200, _status(200, "Success", "") | {"status": "Success"}
            return (200, cluster.read_created(name)) if request.verb == "get" else \
                (405, _status(405, "MethodNotAllowed", "not served by this fake"))
        if name != cluster.deployment["metadata"]["name"]:
            return 404, _status(404, "NotFound", f'deployments.apps "{name}" not found')
        if request.verb == "get":
            return 200, cluster.read()
        if request.verb == "patch":
            if request.content_type not in (SMP, JSON_PATCH):
                return 415, _status(415, "UnsupportedMediaType",
                                    f"the body of the request was in an unknown format - accepted media types "
                                    f"include: {JSON_PATCH}, application/merge-patch+json, {SMP}")
            try:
                return 200, cluster.patch(request.content_type, request.body)
            except PatchConflict as exc:
                return 422, _status(422, "Invalid", f"the server rejected our request due to an error in our "
                                                    f"request: {exc}")
        return 405, _status(405, "MethodNotAllowed", "not served by this fake")

    def do_GET(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()


Predict = Callable[[str, list[dict[str, Any]]], list[dict[str, float]]]


def constant_predict(version: str, records: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [{"0": 0.75, "1": 0.25} for _ in records]


@dataclass
class ModelBehaviour:
    """What the Service answers, by served CT_MODEL_VERSION: versions in `broken` fail /predict/batch."""

    broken: set[str] = field(default_factory=set)
    predict: Predict = constant_predict


class FakeModelServer(_Server):
    """The serving Service: answers for the template of `api.cluster` that finished rolling out last."""

    def __init__(self, api: FakeApiServer, behaviour: ModelBehaviour | None = None) -> None:
        self.api = api
        self.behaviour = behaviour or ModelBehaviour()
        super().__init__(_ModelHandler)


class _ModelHandler(_Handler):
    def _served(self) -> tuple[str, str | None]:
        owner: FakeModelServer = self.server.owner  # type: ignore[attr-defined]
        with owner.api.cluster.lock:
            env = owner.api.cluster.served_env()
        return env.get("CT_MODEL_VERSION") or "0", env.get("CT_MODEL_SHA256")

    def do_GET(self) -> None:
        version, sha256 = self._served()
        path = urlsplit(self.path).path
        if path == "/health":
            self._send(200, {"status": "ok"})
        elif path == "/ready":
            self._send(200, {"status": "ready", "model_version": version})
        elif path == "/model":
            self._send(200, {"name": "employee-attrition", "version": version, "sha256": sha256})
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        owner: FakeModelServer = self.server.owner  # type: ignore[attr-defined]
        version, _ = self._served()
        records = self._body()["records"]
        if urlsplit(self.path).path != "/predict/batch":
            self._send(404, {"detail": "Not Found"})
        elif version in owner.behaviour.broken:
            self._send(500, {"detail": "internal server error (logged by the server)"})
        else:
            out = [{"prediction_id": f"p{i}", "model_version": version, "label": max(p, key=p.get), "probabilities": p}
                   for i, p in enumerate(owner.behaviour.predict(version, records))]
            self._send(200, {"model_version": version, "predictions": out})


@contextmanager
def fake_kubernetes(cluster: FakeCluster | None = None,
                    behaviour: ModelBehaviour | None = None) -> Iterator[tuple[FakeApiServer, FakeModelServer]]:
    """A FakeApiServer and its FakeModelServer, running for the with-block."""
    api = FakeApiServer(cluster).start()
    model = FakeModelServer(api, behaviour).start()
    try:
        yield api, model
    finally:
        model.stop()
        api.stop()


def write_kubeconfig(path: Path, server: str, namespace: str = NAMESPACE) -> Path:
    """A kubeconfig for the fake API server (a bearer token, as a service account's)."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "deployer", "namespace": namespace}}],
        "users": [{"name": "deployer", "user": {"token": "fake-service-account-token"}}],
    }))
    return path
