"""A small Kubernetes API server for tests: the real REST and watch protocol, in memory.

It serves the core/v1 and networking.k8s.io/v1 paths KubeAgentSpawner and the
test kubelet use: create, get, list, watch (JSON lines with resourceVersion
and timeoutSeconds), replace, merge-patch, delete (with graceful pod deletion
left to the kubelet, as in a cluster), label and field selectors, and the
``Status`` error objects a client expects (404, 409, 422). It validates object
names and label values as the real API server does, so a bad name fails here
too. Nodes are cluster-scoped objects the kubelets register, and a pod is
bound to one through its ``binding`` subresource, as the scheduler does it
(``kube_cluster`` runs a small scheduler). There are no controllers and no
garbage collector: the test kubelets play the nodes, and PVCs bind at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

NAMESPACED = {
    # plural: (apiVersion, kind)
    "pods": ("v1", "Pod"),
    "secrets": ("v1", "Secret"),
    "persistentvolumeclaims": ("v1", "PersistentVolumeClaim"),
    "events": ("v1", "Event"),
    "services": ("v1", "Service"),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy"),
}
CLUSTER_SCOPED = {"nodes": ("v1", "Node")}
KINDS = {**NAMESPACED, **CLUSTER_SCOPED}
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][A-Za-z0-9._-]{0,61})?[A-Za-z0-9])?$")
# Pods and services need DNS labels; the rest DNS subdomains.
LABEL_NAMED = {"pods", "services", "namespaces"}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge: lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def lookup(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def matches(obj: dict[str, Any], labels: str | None, fields: str | None) -> bool:
    own = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, (labels or "").split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if own.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if own.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in own:
                return False
        elif term not in own:
            return False
    for term in filter(None, (fields or "").split(",")):
        negate = "!=" in term
        k, v = term.replace("!=", "=").replace("==", "=").split("=", 1)
        value = lookup(obj, k)
        if (str(value) if value is not None else "") == v and negate:
            return False
        if (str(value) if value is not None else "") != v and not negate:
            return False
    return True


def invalid(plural: str, obj: dict[str, Any]) -> str | None:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    pattern = DNS_LABEL if plural in LABEL_NAMED else DNS_SUBDOMAIN
    if not name or not pattern.match(name):
        return f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 name is required"
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            return f"metadata.labels: Invalid value: {value!r} for label {key!r}"
    return None


@dataclass
class Cluster:
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    history: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)
    version: int = 1
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def record(self, plural: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Give ``obj`` the next resourceVersion and tell watchers (ADDED/MODIFIED/DELETED)."""
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.history.append((self.version, plural, kind, copy.deepcopy(obj)))
        del self.history[:-5000]
        async with self.changed:
            self.changed.notify_all()
        return obj

    def items(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        return [
            o
            for (p, ns, _), o in sorted(self.objects.items())
            if p == plural and (namespace is None or ns == namespace)
        ]


CLUSTER_KEY = web.AppKey("cluster", Cluster)


@dataclass
class MetricsApi:
    """The metrics API (metrics.k8s.io, served by metrics-server in a cluster):
    ``source(namespace, name)`` gives a pod's PodMetrics (None: not sampled).
    ``served`` False is a cluster without it: the group answers 404."""

    source: Callable[[str, str], dict[str, Any] | None] | None = None
    served: bool = True


METRICS_KEY = web.AppKey("metrics", MetricsApi)
# pods/attach: (namespace, pod name) -> the container's stdin on its node, if open.
ATTACH_KEY = web.AppKey("attach", Callable[[str, str], asyncio.StreamWriter | None])
METRICS_BASE = "/apis/metrics.k8s.io/v1beta1"


def _cluster(request: web.Request) -> Cluster:
    return request.app[CLUSTER_KEY]


def _target(request: web.Request) -> tuple[str, str | None, str | None, str | None]:
    info = request.match_info
    return info["plural"], info.get("namespace"), info.get("name"), info.get("sub")


async def list_or_watch(request: web.Request) -> web.StreamResponse:
    cluster = _cluster(request)
    plural, namespace, _, _ = _target(request)
    if plural not in KINDS:
        return status(
            404, "NotFound", f"the server could not find the requested resource ({plural})"
        )
    q = request.query
    labels, fields = q.get("labelSelector"), q.get("fieldSelector")
    if q.get("watch", "").lower() in ("true", "1"):
        return await _watch(request, cluster, plural, namespace, labels, fields)
    api_version, kind = KINDS[plural]
    items = [o for o in cluster.items(plural, namespace) if matches(o, labels, fields)]
    return web.json_response(
        {
            "kind": f"{kind}List",
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(cluster.version)},
            "items": items,
        }
    )


async def _watch(
    request: web.Request,
    cluster: Cluster,
    plural: str,
    namespace: str | None,
    labels: str | None,
    fields: str | None,
) -> web.StreamResponse:
    q = request.query
    since = int(q.get("resourceVersion") or 0)
    timeout = float(q.get("timeoutSeconds") or 300)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def send(kind: str, obj: dict[str, Any]) -> None:
        line = json.dumps({"type": kind, "object": obj}) + "\n"
        await response.write(line.encode())

    try:
        if since == 0:
            # "Any" version: start with the current state, as the API server does.
            for obj in cluster.items(plural, namespace):
                if matches(obj, labels, fields):
                    await send("ADDED", obj)
            since = cluster.version
        while True:
            for version, p, kind, obj in list(cluster.history):
                if version <= since:
                    continue
                # Past every change, of any kind, or the wait below would not wait.
                since = version
                if p != plural:
                    continue
                if namespace is not None and obj["metadata"].get("namespace") != namespace:
                    continue
                if matches(obj, labels, fields):
                    await send(kind, obj)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            async with cluster.changed:
                try:
                    await asyncio.wait_for(
                        cluster.changed.wait_for(lambda seen=since: cluster.version > seen),
                        remaining,
                    )
                except TimeoutError:
                    break
    except ConnectionError:
        return response  # the client went away
    with contextlib.suppress(ConnectionError):  # the client went away first
        await response.write_eof()
    return response


async def create(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    plural, namespace, _, _ = _target(request)
    if plural not in KINDS or (namespace is None) != (plural in CLUSTER_SCOPED):
        return status(405, "MethodNotAllowed", "create is not supported here")
    obj = await request.json()
    meta = obj.setdefault("metadata", {})
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
    problem = invalid(plural, obj)
    if problem:
        return status(422, "Invalid", f"{KINDS[plural][1]} is invalid: {problem}")
    key = (plural, namespace or "", meta["name"])
    if key in cluster.objects:
        return status(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists')
    obj["apiVersion"], obj["kind"] = KINDS[plural]
    meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
    if namespace is not None:
        meta["namespace"] = namespace
    if plural == "secrets" and "stringData" in obj:
        data = obj.setdefault("data", {})
        for k, v in obj.pop("stringData").items():
            data[k] = base64.b64encode(v.encode()).decode()
    if plural == "pods":
        obj["status"] = {"phase": "Pending", "qosClass": "Burstable"}
    if plural == "persistentvolumeclaims":
        # No provisioner here: a claim binds at once.
        obj["status"] = {"phase": "Bound", "accessModes": obj["spec"].get("accessModes", [])}
    cluster.objects[key] = obj
    await cluster.record(plural, "ADDED", obj)
    return web.json_response(obj, status=201)


async def read(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    plural, namespace, name, _ = _target(request)
    obj = cluster.objects.get((plural, namespace or "", name or ""))
    if obj is None:
        return status(404, "NotFound", f'{plural} "{name}" not found')
    return web.json_response(obj)


async def update(request: web.Request) -> web.Response:
    """PUT (replace) and PATCH (merge), on the object or its status subresource."""
    cluster = _cluster(request)
    plural, namespace, name, sub = _target(request)
    key = (plural, namespace or "", name or "")
    obj = cluster.objects.get(key)
    if obj is None:
        return status(404, "NotFound", f'{plural} "{name}" not found')
    body = await request.json()
    if request.method == "PATCH":
        if "json-patch" in (request.content_type or ""):
            return status(415, "UnsupportedMediaType", "JSON patch is not supported here")
        new = merge_patch(obj, body)
    elif sub == "status":
        new = dict(obj, status=body.get("status", {}))
    else:
        new = dict(body, status=obj.get("status")) if "status" in obj else dict(body)
    if sub != "status" and request.method == "PUT":
        problem = invalid(plural, new)
        if problem:
            return status(422, "Invalid", problem)
    for fixed in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
        if fixed in obj["metadata"]:
            new.setdefault("metadata", {})[fixed] = obj["metadata"][fixed]
    new["apiVersion"], new["kind"] = KINDS[plural]
    cluster.objects[key] = new
    await cluster.record(plural, "MODIFIED", new)
    return web.json_response(new)


async def delete(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    plural, namespace, name, _ = _target(request)
    key = (plural, namespace or "", name or "")
    obj = cluster.objects.get(key)
    if obj is None:
        return status(404, "NotFound", f'{plural} "{name}" not found')
    options = (await request.json()) if request.can_read_body else {}
    options = options or {}
    wanted_uid = (options.get("preconditions") or {}).get("uid")
    if wanted_uid and wanted_uid != obj["metadata"]["uid"]:
        return status(409, "Conflict", f"Precondition failed: UID in precondition: {wanted_uid}")
    grace = request.query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
    running = obj.get("status", {}).get("phase") == "Running"
    if plural == "pods" and running and str(grace) != "0":
        # Graceful: mark it; the kubelet stops the containers, then deletes it for good.
        meta = obj["metadata"]
        if "deletionTimestamp" not in meta:
            meta["deletionTimestamp"] = now()
            meta["deletionGracePeriodSeconds"] = int(
                grace if grace is not None else obj["spec"].get("terminationGracePeriodSeconds", 30)
            )
            await cluster.record(plural, "MODIFIED", obj)
        return web.json_response(obj)
    if plural == "pods" and running:
        # Forced (grace 0): the kubelet kills the containers without a grace period.
        obj["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
    del cluster.objects[key]
    await cluster.record(plural, "DELETED", obj)
    return web.json_response(obj)


async def bind(request: web.Request) -> web.Response:
    """POST pods/{name}/binding: the scheduler's choice of a node for a pending pod."""
    cluster = _cluster(request)
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    pod = cluster.objects.get(("pods", namespace, name))
    if pod is None:
        return status(404, "NotFound", f'pods "{name}" not found')
    target = ((await request.json()) or {}).get("target") or {}
    if pod["spec"].get("nodeName"):
        return status(
            409, "Conflict", f'pod {name} is already assigned to node "{pod["spec"]["nodeName"]}"'
        )
    if ("nodes", "", target.get("name", "")) not in cluster.objects:
        return status(404, "NotFound", f'nodes "{target.get("name")}" not found')
    pod["spec"]["nodeName"] = target["name"]
    pod.setdefault("status", {})["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    await cluster.record("pods", "MODIFIED", pod)
    success = {"kind": "Status", "apiVersion": "v1", "status": "Success"}
    return web.json_response(success, status=201)


def _metrics(request: web.Request) -> MetricsApi | None:
    metrics = request.app[METRICS_KEY]
    return metrics if metrics.served and metrics.source is not None else None


async def metrics_resources(request: web.Request) -> web.Response:
    if _metrics(request) is None:
        return status(404, "NotFound", "the server could not find the requested resource")
    resources = [{"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics",
                  "verbs": ["get", "list"]}]  # fmt: skip
    return web.json_response(
        {"kind": "APIResourceList", "groupVersion": "metrics.k8s.io/v1beta1",
         "resources": resources}
    )  # fmt: skip


async def pod_metrics(request: web.Request) -> web.Response:
    metrics = _metrics(request)
    if metrics is None or metrics.source is None:
        return status(404, "NotFound", "the server could not find the requested resource")
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    found = metrics.source(namespace, name)
    if found is None:
        return status(404, "NotFound", f'podmetrics.metrics.k8s.io "{namespace}/{name}" not found')
    return web.json_response(found)


async def serve_metrics(request: web.Request) -> web.Response:
    """PUT /_emulator/metrics {"served": bool}: install or remove the metrics API
    (the emulator's own control, as the fake model API has /_fake)."""
    request.app[METRICS_KEY].served = bool((await request.json()).get("served"))
    return web.json_response({"served": request.app[METRICS_KEY].served})


async def attach(request: web.Request) -> web.StreamResponse:
    """GET pods/{name}/attach?stdin=true over a WebSocket (the v4.channel.k8s.io
    protocol: each binary message is a channel byte, 0 for stdin, then data), as
    ``kubectl attach -i`` and kubernetes_asyncio's WsApiClient speak it. The data
    goes to the container's stdin; closing the socket closes it (``stdinOnce``)."""
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    pod = _cluster(request).objects.get(("pods", namespace, name))
    if pod is None:
        return status(404, "NotFound", f'pods "{name}" not found')
    container = pod["spec"]["containers"][0]
    if not container.get("stdin"):
        return status(400, "BadRequest", f"{container['name']}: stdin is not enabled")
    stdin = request.app[ATTACH_KEY](namespace, name)
    if stdin is None:
        return status(400, "BadRequest", f"pod {name} is not running")
    ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io", "channel.k8s.io"))
    await ws.prepare(request)
    async for message in ws:
        data = message.data if isinstance(message.data, bytes) else message.data.encode()
        if data[:1] == b"\x00" and len(data) > 1:
            stdin.write(data[1:])
            await stdin.drain()
    if container.get("stdinOnce"):
        stdin.close()
    return ws


async def version(request: web.Request) -> web.Response:
    return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-sac-emulator"})


def make_app(
    metrics_source: Callable[[str, str], dict[str, Any] | None] | None = None,
    attach_stdin: Callable[[str, str], asyncio.StreamWriter | None] | None = None,
) -> web.Application:
    app = web.Application(client_max_size=8 * 2**20)
    app[CLUSTER_KEY] = Cluster()
    app[METRICS_KEY] = MetricsApi(metrics_source)
    app[ATTACH_KEY] = attach_stdin or (lambda namespace, name: None)
    core, net = "/api/v1", "/apis/networking.k8s.io/v1"
    for base in (core, net):
        ns = base + "/namespaces/{namespace}/{plural}"
        app.router.add_get(base + "/{plural}", list_or_watch)
        app.router.add_get(ns, list_or_watch)
        app.router.add_post(ns, create)
        app.router.add_get(ns + "/{name}", read)
        app.router.add_put(ns + "/{name}", update)
        app.router.add_patch(ns + "/{name}", update)
        app.router.add_delete(ns + "/{name}", delete)
        app.router.add_put(ns + "/{name}/{sub:status}", update)
        app.router.add_patch(ns + "/{name}/{sub:status}", update)
    app.router.add_post(core + "/namespaces/{namespace}/pods/{name}/binding", bind)
    app.router.add_get(core + "/namespaces/{namespace}/pods/{name}/attach", attach)
    nodes = core + "/{plural:nodes}"
    app.router.add_post(nodes, create)
    app.router.add_get(nodes + "/{name}", read)
    app.router.add_put(nodes + "/{name}", update)
    app.router.add_patch(nodes + "/{name}", update)
    app.router.add_delete(nodes + "/{name}", delete)
    app.router.add_get(METRICS_BASE, metrics_resources)
    app.router.add_get(METRICS_BASE + "/namespaces/{namespace}/pods/{name}", pod_metrics)
    app.router.add_put("/_emulator/metrics", serve_metrics)
    app.router.add_get("/version", version)
    return app
