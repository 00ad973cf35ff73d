"""A real Kubernetes control plane on loopback for the canary tests.

etcd (Debian's `etcd-server`), kube-apiserver and kube-controller-manager v1.20.2 (built from
Debian's `kubernetes` source package by `.ci/build-kube.sh`), TLS with a generated CA, a static
token file, RBAC, and a kubeconfig with a namespaced `deployer` user and a cluster `admin`.

There is no kubelet and no scheduler: `FakeKubelet`, a thread using the official client, binds
pending pods to a fake node, marks them Running and Ready (or never Ready, for images the test
names), and finishes graceful deletions. With the controller-manager's deployment and replicaset
controllers that is enough for real rolling updates.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

__all__ = ["KUBE_VERSION", "kube_bin_dir", "missing_binaries", "KubeCluster", "FakeKubelet"]

KUBE_VERSION = "1.20.2"
NODE = "fake-node"


def kube_bin_dir() -> Path:
    cache = os.environ.get("PLAYBOOK_TEST_CACHE") or os.path.expanduser("~/.cache/playbook-tests")
    return Path(cache) / f"kube-{KUBE_VERSION}" / "bin"


def missing_binaries() -> list[str]:
    """What the cluster needs and this machine lacks (empty when the tests can run)."""
    missing = [
        str(kube_bin_dir() / b)
        for b in ("kube-apiserver", "kube-controller-manager")
        if not os.access(kube_bin_dir() / b, os.X_OK)
    ]
    if not shutil.which("etcd"):
        missing.append("etcd (apt-get install etcd-server)")
    return missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _certs(d: Path) -> None:
    """A CA, a serving certificate for 127.0.0.1 and a service-account key pair (1.20 needs it)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "playbook-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default.svc"),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "apiserver.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "apiserver.key").write_bytes(pem_key(key))
    (d / "sa.key").write_bytes(pem_key(sa))
    (d / "sa.pub").write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for p in d.iterdir():
        p.chmod(0o600)


class KubeCluster:
    """etcd + kube-apiserver + kube-controller-manager + `FakeKubelet`, all on 127.0.0.1.

    `kubeconfig` has contexts `test` (user `deployer`, allowed only what the canary needs in
    `namespace`), `limited` (user `limited`: may patch ConfigMaps and Services but only read
    Deployments) and `admin` (system:masters); `admin_client()` is a kubernetes ApiClient."""

    def __init__(self, root: Path, namespace: str = "wp-platform") -> None:
        self.root = Path(root)
        self.namespace = namespace
        self.bin = kube_bin_dir()
        self.procs: dict[str, subprocess.Popen] = {}
        self.admin_token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        self.deployer_token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        self.limited_token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        self.kubeconfig = self.root / "kube" / "config"
        self.port = 0
        self.kubelet: FakeKubelet | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> KubeCluster:
        pki = self.root / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        _certs(pki)
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        try:
            self._start_etcd(logs, timeout)
            self._start_apiserver(pki, logs, timeout)
            self._write_kubeconfig(pki)
            self._start_controller_manager(logs)
            self._bootstrap()
            self.kubelet = FakeKubelet(self.admin_client())
            self.kubelet.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str], logs: Path) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "wb")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self.procs[name] = proc
        return proc

    def _log_tail(self, name: str, n: int = 3000) -> str:
        try:
            return (self.root / "logs" / f"{name}.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _start_etcd(self, logs: Path, timeout: float) -> None:
        client, peer = _free_port(), _free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        data = self.root / "etcd"
        argv = [
            "etcd",
            "--name",
            "default",
            "--data-dir",
            str(data),
            "--listen-client-urls",
            self.etcd_url,
            "--advertise-client-urls",
            self.etcd_url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
        ]
        self._spawn("etcd", argv, logs)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["etcd"].poll() is not None:
                raise RuntimeError(f"etcd exited: {self._log_tail('etcd')}")
            try:
                with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd not healthy after {timeout}s: {self._log_tail('etcd')}")

    def _start_apiserver(self, pki: Path, logs: Path, timeout: float) -> None:
        self.port = _free_port()
        tokens = self.root / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},admin,admin,"system:masters"\n{self.deployer_token},deployer,deployer\n'
            f"{self.limited_token},limited,limited\n"
        )
        tokens.chmod(0o600)
        argv = [
            str(self.bin / "kube-apiserver"),
            "--etcd-servers",
            self.etcd_url,
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
            "--secure-port",
            str(self.port),
            "--insecure-port",
            "0",
            "--cert-dir",
            str(self.root / "apiserver-certs"),
            "--tls-cert-file",
            str(pki / "apiserver.crt"),
            "--tls-private-key-file",
            str(pki / "apiserver.key"),
            "--token-auth-file",
            str(tokens),
            "--authorization-mode",
            "RBAC",
            "--endpoint-reconciler-type",
            "none",
            "--service-account-issuer",
            "https://kubernetes.default.svc",
            "--service-account-key-file",
            str(pki / "sa.pub"),
            "--service-account-signing-key-file",
            str(pki / "sa.key"),
            "--service-cluster-ip-range",
            "10.0.0.0/24",
            # no token controller runs, so pods could never get a service-account token
            "--disable-admission-plugins",
            "ServiceAccount",
            "--profiling=false",
            "--enable-priority-and-fairness=false",
            *self._audit_args(),
        ]
        self._spawn("kube-apiserver", argv, logs)
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        deadline = time.monotonic() + timeout
        req = urllib.request.Request(
            f"https://127.0.0.1:{self.port}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        while time.monotonic() < deadline:
            if self.procs["kube-apiserver"].poll() is not None:
                raise RuntimeError(f"kube-apiserver exited: {self._log_tail('kube-apiserver')}")
            try:
                with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
                    if r.read().strip() == b"ok":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s: {self._log_tail('kube-apiserver')}")

    def _audit_args(self) -> list[str]:
        """Every request's metadata (user, verb, object) logged when it is received, so a test can
        prove what a client sent (`audit_events`)."""
        policy = self.root / "audit-policy.yaml"
        policy.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["ResponseStarted", "ResponseComplete"],
                    "rules": [{"level": "Metadata"}],
                }
            )
        )
        self.audit_log = self.root / "logs" / "audit.log"
        return [
            "--audit-policy-file",
            str(policy),
            "--audit-log-path",
            str(self.audit_log),
            "--audit-log-format",
            "json",
            "--audit-log-mode",
            "blocking",
        ]

    def audit_events(self, user: str = "deployer") -> list[dict]:
        """The audit events of `user`'s requests so far ({"verb", "requestURI", "objectRef"...}).
        Events are logged as requests are received (before they are answered), so every request
        a client has had an answer to is here."""
        try:
            lines = self.audit_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # the line being written right now
        return [e for e in events if (e.get("user") or {}).get("username") == user]

    def _write_kubeconfig(self, pki: Path) -> None:
        ca = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
        server = f"https://127.0.0.1:{self.port}"
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority-data": ca}}],
            "users": [
                {"name": "deployer", "user": {"token": self.deployer_token}},
                {"name": "admin", "user": {"token": self.admin_token}},
                {"name": "limited", "user": {"token": self.limited_token}},
            ],
            "contexts": [
                {"name": "test", "context": {"cluster": "local", "user": "deployer", "namespace": self.namespace}},
                {"name": "admin", "context": {"cluster": "local", "user": "admin"}},
                {"name": "limited", "context": {"cluster": "local", "user": "limited", "namespace": self.namespace}},
            ],
            "current-context": "admin",
        }
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.write_text(yaml.safe_dump(doc))
        self.kubeconfig.chmod(0o600)

    def _start_controller_manager(self, logs: Path) -> None:
        argv = [
            str(self.bin / "kube-controller-manager"),
            "--kubeconfig",
            str(self.kubeconfig),  # current-context: admin
            "--controllers",
            "deployment,replicaset",
            "--leader-elect=false",
            "--port",
            "0",
            "--secure-port",
            "0",
            "--concurrent-deployment-syncs",
            "2",
            "--concurrent-replicaset-syncs",
            "2",
        ]
        self._spawn("kube-controller-manager", argv, logs)
        time.sleep(0.5)
        if self.procs["kube-controller-manager"].poll() is not None:
            raise RuntimeError(f"kube-controller-manager exited: {self._log_tail('kube-controller-manager')}")

    # -- clients and fixtures -------------------------------------------------------------------

    def admin_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig), context="admin")

    def _bootstrap(self) -> None:
        from kubernetes import client

        api = self.admin_client()
        client.CoreV1Api(api).create_node({"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}})
        api.close()
        self.add_namespace(self.namespace)

    def add_namespace(self, name: str) -> str:
        """Create namespace `name` where the kubeconfig's `deployer` user may do what the canary
        needs (RBAC Role + RoleBinding) and nothing more."""
        from kubernetes import client

        api = self.admin_client()
        try:
            core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
            core.create_namespace({"metadata": {"name": name}})
            rbac.create_namespaced_role(
                name,
                {
                    "metadata": {"name": "canary-deployer"},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "resources": ["configmaps", "services"],
                            "verbs": ["get", "list", "watch", "patch", "update"],
                        },
                        {
                            "apiGroups": ["apps"],
                            "resources": ["deployments"],
                            "verbs": ["get", "list", "watch", "patch", "update"],
                        },
                        {"apiGroups": [""], "resources": ["services"], "verbs": ["create"]},  # a preview
                        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
                        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                    ],
                },
            )
            rbac.create_namespaced_role_binding(
                name,
                {
                    "metadata": {"name": "canary-deployer"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "canary-deployer"},
                    "subjects": [{"kind": "User", "name": "deployer", "apiGroup": "rbac.authorization.k8s.io"}],
                },
            )
            rbac.create_namespaced_role(
                name,
                {
                    "metadata": {"name": "canary-limited"},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "resources": ["configmaps", "services"],
                            "verbs": ["get", "list", "watch", "patch", "update"],
                        },
                        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
                    ],
                },
            )
            rbac.create_namespaced_role_binding(
                name,
                {
                    "metadata": {"name": "canary-limited"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "canary-limited"},
                    "subjects": [{"kind": "User", "name": "limited", "apiGroup": "rbac.authorization.k8s.io"}],
                },
            )
        finally:
            api.close()
        return name

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")


class FakeKubelet:
    """Binds pending pods to `fake-node`, marks them Running and Ready, and completes deletions.

    Pods with a container image containing any string in `never_ready` run but never become
    Ready (a crash-looping release, for the failed-rollout test)."""

    def __init__(self, api_client, interval: float = 0.15) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.api_client = api_client
        self.interval = interval
        self.never_ready: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)
        self._ips = 0
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.api_client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # noqa: BLE001 - keep the node alive; tests read `errors`
                self.errors.append(repr(exc)[:300])
            self._stop.wait(self.interval)

    def _sync(self) -> None:
        from kubernetes.client.rest import ApiException

        pods = self.core.list_pod_for_all_namespaces(timeout_seconds=10).items
        for pod in pods:
            ns, name = pod.metadata.namespace, pod.metadata.name
            try:
                if pod.metadata.deletion_timestamp is not None:
                    self.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
                elif not pod.spec.node_name:
                    self.core.create_namespaced_binding(
                        ns,
                        {
                            "apiVersion": "v1",
                            "kind": "Binding",
                            "metadata": {"name": name},
                            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
                        },
                        _preload_content=False,
                    )
                else:
                    self._set_status(pod)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise

    def _set_status(self, pod) -> None:
        images = [c.image for c in pod.spec.containers]
        ready = not any(bad in img for img in images for bad in self.never_ready)
        status = pod.status
        current_ready = any(c.type == "Ready" and c.status == "True" for c in (status.conditions or []))
        if status.phase == "Running" and current_ready == ready and status.container_statuses:
            return
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._ips += 1
        flag = "True" if ready else "False"
        body = {
            "status": {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": status.pod_ip or f"10.1.{self._ips // 250}.{self._ips % 250 + 1}",
                "startTime": now,
                "conditions": [
                    {"type": t, "status": s, "lastTransitionTime": now}
                    for t, s in (
                        ("PodScheduled", "True"),
                        ("Initialized", "True"),
                        ("ContainersReady", flag),
                        ("Ready", flag),
                    )
                ],
                "containerStatuses": [
                    {
                        "name": c.name,
                        "image": c.image,
                        "imageID": f"docker-pullable://{c.image}",
                        "ready": ready,
                        "restartCount": 0 if ready else 3,
                        "started": True,
                        "state": {"running": {"startedAt": now}},
                    }
                    for c in pod.spec.containers
                ],
            }
        }
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, body)
