"""A test kubelet: runs each pod's real container command on this machine.

It talks to the Kubernetes API (the emulator, or any API server) over HTTP
only, as a kubelet does: it registers its Node, watches the pods bound to it,
reports their status through the ``/status`` subresource and records Events.
A ``Scheduler`` binds each pending pod to a node that takes pods (one not
cordoned), so a cluster of several kubelets moves an agent to another node
when its node is cordoned, as a drain does. For each pod bound to its node it

- "pulls" the image: an image is known when the kubelet was started with it
  (``images``: name -> directories put first on PATH, as the image's ENV PATH);
  an unknown image ends in ErrImagePull / ImagePullBackOff;
- resolves the container's environment, including ``valueFrom.secretKeyRef``
  read from the Secret through the API (a missing Secret ends in
  CreateContainerConfigError);
- gives each volume a host directory (an emptyDir per pod on this node; a
  PVC's directory, in the storage every node shares as a network volume,
  outlives its pods; ``subPath`` mounts a folder of it, made if missing) and
  runs the container's command under bubblewrap with the volumes at their
  mountPaths, the node's own directories read-only as the image's filesystem,
  the pod's runAsUser in a user namespace, its own PID namespace and a
  read-only root when readOnlyRootFilesystem is set;
- gives the pod an address of its own, 127.0.0.N, as its podIP. Pods share the
  node's network namespace, so where a pod's environment tells its server to
  bind every address (JUPYTERHUB_SERVICE_URL with host 0.0.0.0) the kubelet
  substitutes the pod's address: that is what 0.0.0.0 means inside a real pod;
- reports Running/Ready when the container starts; on exit, restarts it after a
  back-off (CrashLoopBackOff, with the last output as the termination message
  under FallbackToLogsOnError) as restartPolicy says;
- on deletion stops the container (SIGTERM, SIGKILL after the grace period;
  SIGKILL at once for a forced deletion) and removes the pod.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from .stack import process_children, process_tree

PIPE = asyncio.subprocess.PIPE

# Node directories that are not part of an "image": a container gets its own.
NODE_ONLY = {
    "proc",
    "dev",
    "sys",
    "tmp",
    "run",
    "home",
    "mnt",
    "media",
    "srv",
    "boot",
    "lost+found",
    "old_root",
}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def container_argv(
    bwrap: str,
    command: list[str],
    mounts: list[tuple[str, str, bool]],
    workdir: str,
    uid: int | None,
    gid: int | None,
    read_only_root: bool,
    hostname: str,
    image_paths: list[str] = (),  # type: ignore[assignment]
    root: Path = Path("/"),
) -> list[str]:
    """The bubblewrap command line that gives ``command`` a container's view of files.

    ``mounts`` are (host path, mountPath, read-only). The node's top-level
    directories stand in for the image's filesystem, except those the container
    gets its own of and those a mount takes the place of.
    """
    taken = {m[1].strip("/").split("/")[0] for m in mounts}
    argv = [bwrap, "--tmpfs", "/"]
    for entry in sorted(root.iterdir()):
        if entry.name in NODE_ONLY or entry.name in taken:
            continue
        if entry.is_symlink():
            argv += ["--symlink", os.readlink(entry), f"/{entry.name}"]
        elif entry.is_dir():
            argv += ["--ro-bind", str(entry), f"/{entry.name}"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for host, path, read_only in mounts:
        argv += ["--ro-bind" if read_only else "--bind", host, path]
    for path in image_paths:
        # The image's own directories (its PATH), wherever they live on the node.
        argv += ["--ro-bind", path, path]
    if uid is not None:
        argv += ["--unshare-user", "--uid", str(uid), "--gid", str(gid if gid is not None else uid)]
    argv += [
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--hostname",
        hostname,
        "--die-with-parent",
        "--chdir",
        workdir or "/",
    ]
    if read_only_root:
        argv += ["--remount-ro", "/"]
    return [*argv, "--", *command]


def bind_url(env: dict[str, str], pod_ip: str) -> dict[str, str]:
    """Inside a pod 0.0.0.0 means the pod's own address; here pods share the node's."""
    out = dict(env)
    if "JUPYTERHUB_SERVICE_URL" in out:
        out["JUPYTERHUB_SERVICE_URL"] = out["JUPYTERHUB_SERVICE_URL"].replace(
            "//0.0.0.0:", f"//{pod_ip}:"
        )
    return out


def tail(path: Path, limit: int = 2048, lines: int = 80) -> str:
    """The end of a container's output, as FallbackToLogsOnError keeps it."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    kept = data.decode(errors="replace").splitlines()[-lines:]
    while len(kept) > 1 and sum(len(line) + 1 for line in kept) > limit:
        kept.pop(0)  # whole lines only
    return "\n".join(kept)[-limit:]


class ContainerError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class PodRun:
    pod: dict[str, Any]
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    ip: str | None = None
    deleting: asyncio.Event = field(default_factory=asyncio.Event)
    # (monotonic time, CPU seconds) at the last metrics sample: the next one's window.
    cpu_mark: tuple[float, float] | None = None


def tree_usage(root: int) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of ``root`` and every process under it, from
    /proc, as a container's cgroup would count them (what ended is not counted)."""
    ticks, pages = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    cpu, rss = 0.0, 0
    for pid in process_tree(root, process_children()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        rss += int(fields[21]) * pages
    return cpu, rss


class ApiUser:
    """A client of the API, as a kubelet or the scheduler is: plain HTTP calls and Events."""

    component = "kubelet"

    def __init__(self, api_url: str, node: str = ""):
        self.api_url = api_url.rstrip("/")
        self.node = node
        self.session: aiohttp.ClientSession | None = None

    async def _call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        assert self.session is not None
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.session.request(
            method, self.api_url + path, json=body, headers=headers, **kw
        ) as resp:
            data = await resp.json()
            if resp.status >= 400:
                raise ContainerError(str(resp.status), data.get("message", ""))
            return data

    async def event(self, pod: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        body = {
            "metadata": {"generateName": f"{meta['name']}."},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "fieldPath": "spec.containers{notebook}",
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": self.component, "host": self.node},
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        }
        with contextlib.suppress(ContainerError, aiohttp.ClientError):
            await self._call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body)

    async def watch_pods(self, on_pod: Callable[[str, dict[str, Any]], None], backoff: float
                         ) -> None:  # fmt: skip
        """Call ``on_pod(event type, pod)`` for every pod event, for ever."""
        assert self.session is not None
        version = "0"
        while True:
            try:
                async with self.session.get(
                    self.api_url + "/api/v1/pods",
                    params={"watch": "true", "resourceVersion": version, "timeoutSeconds": "300"},
                ) as resp:
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        pod = event["object"]
                        version = pod["metadata"]["resourceVersion"]
                        on_pod(event["type"], pod)
            except aiohttp.ClientError:
                await asyncio.sleep(backoff)


class Scheduler(ApiUser):
    """Binds each pending pod to a node that takes pods (``spec.unschedulable``
    unset: not cordoned), the one running fewest pods, through the pod's
    ``binding`` subresource, as kube-scheduler does. With no such node the pod
    stays Pending with a FailedScheduling event, and is tried again."""

    component = "default-scheduler"

    def __init__(self, api_url: str, retry: float = 0.5):
        super().__init__(api_url)
        self.retry = retry
        self.pending: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        try:
            await self.watch_pods(self.on_pod, self.retry)
        finally:
            for task in self.pending.values():
                task.cancel()
            await self.session.close()

    def on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED" or "deletionTimestamp" in pod["metadata"]:
            task = self.pending.pop(uid, None)
            if task is not None:
                task.cancel()
        elif not pod["spec"].get("nodeName") and uid not in self.pending:
            # A pod bound meanwhile only gets a 409 from its binding.
            self.pending[uid] = asyncio.create_task(self._schedule(pod))

    async def _schedule(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        told = False
        try:
            while True:
                node = await self._choose()
                if node is not None:
                    break
                if not told:
                    told = True
                    nodes = len((await self._call("GET", "/api/v1/nodes"))["items"])
                    await self.event(
                        pod, "Warning", "FailedScheduling",
                        f"0/{nodes} nodes are available: {nodes} node(s) were unschedulable.",
                    )  # fmt: skip
                await asyncio.sleep(self.retry)
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": meta["name"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            }
            with contextlib.suppress(ContainerError):  # deleted or bound meanwhile
                path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding"
                await self._call("POST", path, binding)
                await self.event(
                    pod, "Normal", "Scheduled",
                    f"Successfully assigned {meta['namespace']}/{meta['name']} to {node}",
                )  # fmt: skip
        finally:
            self.pending.pop(meta["uid"], None)

    async def _choose(self) -> str | None:
        nodes = (await self._call("GET", "/api/v1/nodes"))["items"]
        open_nodes = [n["metadata"]["name"] for n in nodes if not n["spec"].get("unschedulable")]
        if not open_nodes:
            return None
        pods = (await self._call("GET", "/api/v1/pods"))["items"]
        load = {name: 0 for name in open_nodes}
        for p in pods:
            if p["spec"].get("nodeName") in load:
                load[p["spec"]["nodeName"]] += 1
        return min(open_nodes, key=lambda name: (load[name], name))


class Kubelet(ApiUser):
    def __init__(
        self,
        api_url: str,
        root: Path,
        images: dict[str, list[str]],
        node: str = "sac-test-node",
        backoff: float = 0.5,
        max_backoff: float = 5.0,
        first_ip: int = 10,
        bwrap: str = "bwrap",
        storage: Path | None = None,
        used_ips: set[str] | None = None,
    ):
        super().__init__(api_url, node)
        self.root = root
        # PVCs' data: shared by every node (a network volume), apart from its own disk.
        self.storage = storage or root
        self.images = images
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.first_ip = first_ip
        self.bwrap = bwrap
        self.runs: dict[str, PodRun] = {}
        # Nodes of one test cluster share this machine's loopback addresses.
        self.used_ips: set[str] = used_ips if used_ips is not None else set()

    async def register(self) -> None:
        """Create this node's Node object (kept if it exists: a kubelet restarted)."""
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node, "labels": {"kubernetes.io/hostname": self.node}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
        with contextlib.suppress(ContainerError):
            await self._call("POST", "/api/v1/nodes", node)

    def pod_metrics(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ``PodMetrics`` of a pod running here, as metrics-server would serve it
        (the CPU rate since the previous sample; the memory in use), else None."""
        for run in self.runs.values():
            meta = run.pod["metadata"]
            if (meta["namespace"], meta["name"]) != (namespace, name):
                continue
            if run.proc is None or run.proc.returncode is not None:
                return None
            now_ = asyncio.get_running_loop().time()
            cpu, rss = tree_usage(run.proc.pid)
            since, before = run.cpu_mark or (now_ - 1.0, 0.0)
            rate = max(0.0, cpu - before) / max(now_ - since, 1e-3)
            run.cpu_mark = (now_, cpu)
            container = run.pod["spec"]["containers"][0]["name"]
            return {
                "kind": "PodMetrics",
                "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {"name": name, "namespace": namespace},
                "timestamp": now(),
                "window": f"{max(1, round(now_ - since))}s",
                "containers": [
                    {
                        "name": container,
                        "usage": {"cpu": f"{round(rate * 1e9)}n", "memory": f"{rss // 1024}Ki"},
                    }
                ],
            }
        return None

    def attach_stdin(self, namespace: str, name: str) -> asyncio.StreamWriter | None:
        """The stdin of a running pod's container here, if it has one open
        (``stdin: true``), for the API server's ``pods/attach``."""
        for run in self.runs.values():
            meta = run.pod["metadata"]
            proc = run.proc
            if (meta["namespace"], meta["name"]) == (namespace, name) and proc is not None:
                return proc.stdin if proc.returncode is None else None
        return None

    # ---- API calls --------------------------------------------------------------

    async def report(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        with contextlib.suppress(ContainerError, aiohttp.ClientError):
            await self._call("PATCH", path, {"status": status})

    def _container_status(self, pod: dict[str, Any], **fields: Any) -> dict[str, Any]:
        container = pod["spec"]["containers"][0]
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "started": False,
            **fields,
        }

    # ---- the watch loop ---------------------------------------------------------

    async def run(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        try:
            await self.register()
            await self.watch_pods(self.on_pod, self.backoff)
        finally:
            await self.shutdown()

    def on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        run = self.runs.get(uid)
        if kind == "DELETED":
            if run is not None:
                run.pod = pod  # a forced deletion says so: no grace period
                run.deleting.set()
            return
        if pod["spec"].get("nodeName") != self.node:
            return  # not bound here (yet)
        if run is None:
            if "deletionTimestamp" in pod["metadata"]:
                return
            run = PodRun(pod)
            self.runs[uid] = run
            run.task = asyncio.create_task(self._run_pod(run))
        elif "deletionTimestamp" in pod["metadata"]:
            run.pod = pod
            run.deleting.set()

    async def shutdown(self) -> None:
        for run in list(self.runs.values()):
            run.deleting.set()
            if run.proc is not None and run.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.proc.pid, signal.SIGKILL)
        for run in list(self.runs.values()):
            if run.task is not None:
                run.task.cancel()
                with contextlib.suppress(BaseException):
                    await run.task
        if self.session is not None:
            await self.session.close()

    # ---- one pod ----------------------------------------------------------------

    async def _run_pod(self, run: PodRun) -> None:
        pod = run.pod
        try:
            await self.report(
                pod,
                {
                    "phase": "Pending",
                    "hostIP": "127.0.0.1",
                    "conditions": [{"type": "PodScheduled", "status": "True"}],
                },
            )
            try:
                image_path = await self._pull(run)
                env = await self._environment(pod, image_path)
                mounts = await self._volumes(pod)
                await self._run_container(run, env, mounts, image_path)
            except ContainerError as e:
                await self.report(
                    pod,
                    {
                        "containerStatuses": [
                            self._container_status(
                                pod, state={"waiting": {"reason": e.reason, "message": e.message}}
                            )
                        ]
                    },
                )
                await run.deleting.wait()
        finally:
            await self._finish(run)

    async def _pull(self, run: PodRun) -> list[str]:
        pod = run.pod
        image = pod["spec"]["containers"][0].get("image", "")
        if image in self.images:
            await self.event(
                pod, "Normal", "Pulled", f'Container image "{image}" already present on machine'
            )
            return self.images[image]
        await self.event(pod, "Normal", "Pulling", f'Pulling image "{image}"')
        message = (
            f'failed to pull and unpack image "{image}": failed to resolve reference'
            f' "{image}": not found'
        )
        await self.event(pod, "Warning", "Failed", f'Failed to pull image "{image}": {message}')
        await self.event(pod, "Warning", "Failed", "Error: ErrImagePull")
        await self.report(
            pod,
            {
                "containerStatuses": [
                    self._container_status(
                        pod, state={"waiting": {"reason": "ErrImagePull", "message": message}}
                    )
                ]
            },
        )
        # A real kubelet retries with a back-off; the image does not appear meanwhile.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.deleting.wait(), self.backoff)
        await self.event(pod, "Normal", "BackOff", f'Back-off pulling image "{image}"')
        await self.event(pod, "Warning", "Failed", "Error: ImagePullBackOff")
        # As a kubelet: the registry's answer is in the events, the status says only this.
        raise ContainerError("ImagePullBackOff", f'Back-off pulling image "{image}"')

    async def _environment(self, pod: dict[str, Any], image_path: list[str]) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env = {
            "PATH": os.pathsep.join([*image_path, "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOSTNAME": pod["metadata"]["name"],
        }
        secrets: dict[str, dict[str, str]] = {}
        for var in pod["spec"]["containers"][0].get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                continue  # fieldRef and friends: not needed by these pods
            name = ref["name"]
            if name not in secrets:
                try:
                    secret = await self._call(
                        "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}"
                    )
                except ContainerError:
                    raise ContainerError(
                        "CreateContainerConfigError", f'secret "{name}" not found'
                    ) from None
                secrets[name] = secret.get("data") or {}
            if ref["key"] not in secrets[name]:
                raise ContainerError(
                    "CreateContainerConfigError",
                    f"couldn't find key {ref['key']} in Secret {namespace}/{name}",
                )
            env[var["name"]] = base64.b64decode(secrets[name][ref["key"]]).decode()
        return env

    async def _volumes(self, pod: dict[str, Any]) -> list[tuple[str, str, bool]]:
        namespace = pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts = []
        for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise ContainerError(
                    "CreateContainerConfigError", f"volume {mount['name']!r} not found"
                )
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                try:
                    await self._call(
                        "GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}"
                    )
                except ContainerError:
                    raise ContainerError(
                        "CreateContainerConfigError", f'persistentvolumeclaim "{claim}" not found'
                    ) from None
                host = self.storage / "pvcs" / namespace / claim
            else:
                host = self.root / "pods" / pod["metadata"]["uid"] / "volumes" / mount["name"]
            sub = mount.get("subPath") or ""
            if sub.startswith("/") or ".." in Path(sub).parts:
                message = f"invalid subPath {sub!r}: it must stay in the volume"
                raise ContainerError("CreateContainerConfigError", message)
            host = host / sub if sub else host
            host.mkdir(parents=True, exist_ok=True)
            mounts.append((str(host), mount["mountPath"], bool(mount.get("readOnly"))))
        return mounts

    def _allocate_ip(self, port: int) -> str:
        for n in range(self.first_ip, 255):
            ip = f"127.0.0.{n}"
            if ip in self.used_ips:
                continue
            with socket.socket() as s:
                try:
                    s.bind((ip, port))
                except OSError:
                    continue
            self.used_ips.add(ip)
            return ip
        raise ContainerError("CreateContainerError", "no free pod address left")

    async def _run_container(
        self,
        run: PodRun,
        env: dict[str, str],
        mounts: list[tuple[str, str, bool]],
        image_paths: list[str],
    ) -> None:
        pod = run.pod
        spec = pod["spec"]
        container = spec["containers"][0]
        ports = [p["containerPort"] for p in container.get("ports") or []]
        run.ip = self._allocate_ip(ports[0] if ports else 8888)
        env = bind_url(env, run.ip)
        psc, csc = spec.get("securityContext") or {}, container.get("securityContext") or {}
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        gid = csc.get("runAsGroup", psc.get("runAsGroup"))
        if (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")) and not uid:
            raise ContainerError(
                "CreateContainerConfigError",
                "container has runAsNonRoot and image will run as root",
            )
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        argv = container_argv(
            self.bwrap,
            command,
            mounts,
            container.get("workingDir", "/"),
            uid,
            gid,
            bool(csc.get("readOnlyRootFilesystem")),
            pod["metadata"]["name"],
            image_paths,
        )
        restarts = 0
        delay = self.backoff
        policy = spec.get("restartPolicy", "Always")
        while not run.deleting.is_set():
            # One log per run: the termination message is this run's output only.
            log_path = self.root / "pods" / pod["metadata"]["uid"] / f"notebook-{restarts}.log"
            with open(log_path, "wb") as log:  # noqa: ASYNC230 (a local file, opened once a run)
                run.proc = await asyncio.create_subprocess_exec(
                    *argv,
                    env=env,
                    # `stdin: true`: open for `kubectl attach` (pods/attach), else none.
                    stdin=PIPE if container.get("stdin") else asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            started = now()
            await self.event(pod, "Normal", "Created", f"Created container {container['name']}")
            await self.event(pod, "Normal", "Started", f"Started container {container['name']}")
            probe = container.get("readinessProbe")

            async def running(
                ready: bool, started: str = started, restarts: int = restarts
            ) -> None:
                flag = "True" if ready else "False"
                await self.report(
                    pod,
                    {
                        "phase": "Running",
                        "podIP": run.ip,
                        "podIPs": [{"ip": run.ip}],
                        "startTime": started,
                        "conditions": [
                            {"type": "PodScheduled", "status": "True"},
                            {"type": "Ready", "status": flag},
                            {"type": "ContainersReady", "status": flag},
                        ],
                        "containerStatuses": [
                            self._container_status(
                                pod,
                                ready=ready,
                                started=True,
                                restartCount=restarts,
                                state={"running": {"startedAt": started}},
                            )
                        ],
                    },
                )

            # Without a readiness probe a container is ready once it runs, as with a kubelet.
            await running(ready=probe is None)
            prober = asyncio.ensure_future(self._probe(run, probe, running)) if probe else None
            code = await self._wait_or_stop(run)
            if prober is not None:
                prober.cancel()
            if run.deleting.is_set():
                return
            message = tail(log_path)
            terminated = {
                "exitCode": code,
                "reason": "Error" if code else "Completed",
                "message": message,
                "startedAt": started,
                "finishedAt": now(),
            }
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                await self.report(
                    pod,
                    {
                        "phase": "Succeeded" if code == 0 else "Failed",
                        "containerStatuses": [
                            self._container_status(
                                pod, restartCount=restarts, state={"terminated": terminated}
                            )
                        ],
                    },
                )
                await run.deleting.wait()
                return
            restarts += 1
            await self.event(
                pod,
                "Warning",
                "BackOff",
                f"Back-off restarting failed container {container['name']} in pod"
                f" {pod['metadata']['name']}",
            )
            await self.report(
                pod,
                {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": [
                        self._container_status(
                            pod,
                            restartCount=restarts,
                            lastState={"terminated": terminated},
                            state={
                                "waiting": {
                                    "reason": "CrashLoopBackOff",
                                    "message": f"back-off {delay:g}s restarting failed"
                                    f" container={container['name']}",
                                }
                            },
                        )
                    ],
                },
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.deleting.wait(), delay)
            delay = min(delay * 2, self.max_backoff)

    async def _probe(self, run: PodRun, probe: dict[str, Any], running: Any) -> None:
        """HTTP readiness probe: report Ready at the first answer below 400."""
        assert self.session is not None
        http = probe.get("httpGet") or {}
        container = run.pod["spec"]["containers"][0]
        port = http.get("port", 80)
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
        url = f"http://{run.ip}:{port}{http.get('path', '/')}"
        period = float(probe.get("periodSeconds", 10))
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=period)) as r:
                    if r.status < 400:
                        await running(ready=True)
                        return
            await asyncio.sleep(period)

    async def _wait_or_stop(self, run: PodRun) -> int:
        """The container's exit code; on deletion, stop it within the grace period."""
        assert run.proc is not None
        exited = asyncio.ensure_future(run.proc.wait())
        deleting = asyncio.ensure_future(run.deleting.wait())
        await asyncio.wait({exited, deleting}, return_when=asyncio.FIRST_COMPLETED)
        deleting.cancel()
        if not exited.done():
            await self.event(run.pod, "Normal", "Killing", "Stopping container notebook")
            grace = run.pod["metadata"].get("deletionGracePeriodSeconds", 30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGTERM if grace else signal.SIGKILL)
            try:
                await asyncio.wait_for(asyncio.shield(exited), max(grace, 1))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.proc.pid, signal.SIGKILL)
            await exited
        return exited.result()

    async def _finish(self, run: PodRun) -> None:
        """Stop what still runs, free the address, and delete the pod for good."""
        if run.proc is not None and run.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)
            await run.proc.wait()
        if run.ip:
            self.used_ips.discard(run.ip)
        meta = run.pod["metadata"]
        self.runs.pop(meta["uid"], None)
        with contextlib.suppress(ContainerError, aiohttp.ClientError, RuntimeError):
            # The uid precondition spares a new pod of the same name.
            await self._call(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )
