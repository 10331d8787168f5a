"""A real Kubernetes control plane (etcd + kube-apiserver) for tests, in the style of envtest.

`ControlPlane` starts etcd and kube-apiserver on loopback, on free ports, in a temp dir, with
authentication and RBAC on, as a real cluster has them:

- TLS serving cert for 127.0.0.1/localhost, signed by a throwaway CA (both made with the
  `openssl` CLI, which every machine image has, so the tests need no extra Python package);
- `--token-auth-file` with an admin token (group system:masters) plus each extra identity, e.g. a
  ServiceAccount-like identity for the operator whose rights come only from our RBAC manifests;
- `--authorization-mode=Node,RBAC`, service-account issuer and keys, and the ServiceAccount
  admission plugin off (no controller-manager exists to create token Secrets).

No kubelet, scheduler or controller-manager runs: tests play those parts (see kubelet.py and
`delete_namespace`). Startup takes about 4-5 s on 2 cores, measured while a Go build ran beside
it (etcd ~0.3 s, the apiserver's post-start hooks the rest); `startup_seconds` holds the figure.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx
import kubernetes
import yaml

from tests.support.procs import REPO_ROOT, ManagedProcess, free_port

BIN_DIR_ENV = "COMFYFLEET_K8S_BIN_DIR"
BINARIES_SCRIPT = REPO_ROOT / "scripts" / "k8s-binaries"
BINARIES = ("etcd", "kube-apiserver", "kubectl")
ADMIN = "admin"
# Extra identities are (user name, groups); the admin is a cluster superuser as in kind/minikube.
ADMIN_IDENTITY = ("comfyfleet-test-admin", ["system:masters", "system:authenticated"])
# Bounds for the polls below: a healthy start on 2 cores takes < 10 s; a loaded CI box may need more.
STARTUP_TIMEOUT_S = 120.0
LOG_TAIL_CHARS = 4000
PORT_RACE_ATTEMPTS = 3


class ControlPlaneError(RuntimeError):
    """The control plane could not be provided or did not come up."""


def find_binaries(timeout: float = 3600.0) -> Path:
    """Return the dir holding etcd, kube-apiserver and kubectl.

    From $COMFYFLEET_K8S_BIN_DIR, else from scripts/k8s-binaries (instant on a cache hit; a cold
    build takes ~25 min on 2 cores, so CI runs the script before pytest).
    """
    if env_dir := os.environ.get(BIN_DIR_ENV):
        bin_dir = Path(env_dir)
    else:
        try:
            proc = subprocess.run([str(BINARIES_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ControlPlaneError(f"{BINARIES_SCRIPT} could not run: {exc}") from exc
        if proc.returncode != 0:
            raise ControlPlaneError(
                f"{BINARIES_SCRIPT} failed (exit {proc.returncode}); its log ends:\n{proc.stderr[-LOG_TAIL_CHARS:]}"
            )
        bin_dir = Path(proc.stdout.strip().splitlines()[-1])
    missing = [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"{bin_dir} lacks executable {', '.join(missing)}; run {BINARIES_SCRIPT}")
    return bin_dir


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


_PKI_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = comfyfleet-envtest-ca
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[serving]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1, DNS:localhost
"""


def make_pki(pki: Path) -> None:
    """Write ca.crt, serving.crt/.key and the service-account signing key sa.key/sa.pub into pki."""
    pki.mkdir(parents=True, exist_ok=True)
    (pki / "openssl.cnf").write_text(_PKI_CONFIG)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "7",
             "-config", "openssl.cnf", "-extensions", "ca", cwd=pki)  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", "serving.key", "-out", "serving.csr",
             "-subj", "/CN=kube-apiserver", "-config", "openssl.cnf", cwd=pki)  # fmt: skip
    _openssl("x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "7", "-out", "serving.crt",
             "-extfile", "openssl.cnf", "-extensions", "serving", cwd=pki)  # fmt: skip
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


class ControlPlane:
    """etcd + kube-apiserver with token authentication and RBAC; a context manager.

    Args:
        extra_identities: name -> (user, groups) for identities besides "admin", e.g.
            {"operator": ("system:serviceaccount:comfyfleet:comfyfleet-operator",
                          ["system:serviceaccounts", "system:serviceaccounts:comfyfleet"])}.
        bin_dir: where the binaries are; default `find_binaries()`.
    """

    def __init__(
        self,
        extra_identities: Mapping[str, tuple[str, Sequence[str]]] | None = None,
        bin_dir: Path | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self._bin_dir = bin_dir
        self.startup_timeout = startup_timeout
        self._tmp: Path | None = None
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None
        self.url = self.etcd_url = ""
        self._identities: dict[str, tuple[str, list[str], str]] = {}
        self.add_identity(ADMIN, *ADMIN_IDENTITY)
        for name, (user, groups) in (extra_identities or {}).items():
            self.add_identity(name, user, groups)
        self.startup_seconds = 0.0

    # -- identities and clients ------------------------------------------------------------------

    def add_identity(self, name: str, user: str, groups: Sequence[str]) -> None:
        """Register a token identity; only before start() (the token file is read once)."""
        if self._apiserver is not None:
            raise ControlPlaneError("add identities before start(): the apiserver reads its token file once")
        self._identities[name] = (user, list(groups), secrets.token_hex(24))

    def token(self, identity: str = ADMIN) -> str:
        return self._identity(identity)[2]

    def _identity(self, identity: str) -> tuple[str, list[str], str]:
        try:
            return self._identities[identity]
        except KeyError:
            raise ControlPlaneError(f"unknown identity {identity!r}; known: {sorted(self._identities)}") from None

    @property
    def ca_path(self) -> Path:
        return self._dir / "pki" / "ca.crt"

    def kubeconfig_path(self, identity: str = ADMIN) -> Path:
        """Write (once) and return a kubeconfig file that authenticates as identity."""
        user, _, token = self._identity(identity)
        path = self._dir / "kubeconfigs" / f"{identity}.yaml"
        if not path.exists():
            ca_data = base64.b64encode(self.ca_path.read_bytes()).decode()
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "envtest", "cluster": {"server": self.url, "certificate-authority-data": ca_data}}
                ],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": identity, "context": {"cluster": "envtest", "user": user}}],
                "current-context": identity,
            }
            path.parent.mkdir(exist_ok=True)
            path.write_text(yaml.safe_dump(config))
        return path

    def api_client(self, identity: str = ADMIN) -> kubernetes.client.ApiClient:
        """A Python-client ApiClient for identity (close it, or use it as a context manager)."""
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig_path(identity)))

    def kubectl(
        self, *args: str, identity: str = ADMIN, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl as identity; the caller checks returncode/stdout/stderr."""
        cmd = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={self.kubeconfig_path(identity)}",
            f"--cache-dir={self._dir / 'kubectl-cache'}",  # not ~/.kube/cache: each plane has its own ports
            *args,
        ]
        return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)

    # -- playing the namespace controller ----------------------------------------------------------

    def delete_namespace(self, name: str, timeout: float = 30.0) -> None:
        """Delete a namespace and everything in it, as kube-controller-manager's namespace controller would.

        Without it a deleted namespace stays Terminating and its objects stay visible to a
        cluster-wide watch (an operator under test), so each test would leak into the next.
        Objects still held by finalizers after timeout (an operator that is gone) lose them.
        """
        self.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")
        kinds = ",".join(self._namespaced_kinds())
        self.kubectl("delete", kinds, "--all", "-n", name, "--wait=false", "--grace-period=0", "--force")
        deadline = time.monotonic() + timeout
        while (left := self.kubectl("get", kinds, "-n", name, "-o", "name").stdout.split()) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        for obj in left:
            self.kubectl("patch", obj, "-n", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
        with self.api_client() as api:
            core = kubernetes.client.CoreV1Api(api)
            try:
                namespace = core.read_namespace(name)
                namespace.spec.finalizers = []
                core.replace_namespace_finalize(name, namespace)
            except kubernetes.client.ApiException as exc:
                if exc.status != 404:
                    raise

    def _namespaced_kinds(self) -> list[str]:
        proc = self.kubectl("api-resources", "--namespaced=true", "--verbs=list,delete", "-o", "name")
        if proc.returncode != 0:
            raise ControlPlaneError(f"kubectl api-resources failed: {proc.stderr}")
        return proc.stdout.split()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_binaries()
        return self._bin_dir

    @property
    def _dir(self) -> Path:
        if self._tmp is None:
            raise ControlPlaneError("the control plane is not started")
        return self._tmp

    def start(self) -> ControlPlane:
        """Start etcd and kube-apiserver and wait until /readyz answers ok."""
        bin_dir = self.bin_dir
        started = time.monotonic()
        for attempt in range(1, PORT_RACE_ATTEMPTS + 1):
            self._tmp = Path(tempfile.mkdtemp(prefix="comfyfleet-envtest-"))
            try:
                make_pki(self._dir / "pki")
                self._start_etcd(bin_dir)
                self._start_apiserver(bin_dir)
                break
            except ControlPlaneError as exc:
                self.stop()
                # free_port() cannot reserve a port; another process may take it before we bind.
                if "address already in use" not in str(exc) or attempt == PORT_RACE_ATTEMPTS:
                    raise
            except BaseException:
                self.stop()
                raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _start_etcd(self, bin_dir: Path) -> None:
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        self.etcd_url = client
        self._etcd = ManagedProcess(
            [
                str(bin_dir / "etcd"),
                "--name=envtest",
                f"--data-dir={self._dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=envtest={peer}",
                # Throwaway data: skipping fsync makes writes ~10x faster on a shared disk.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            log_path=self._dir / "etcd.log",
        )
        self._wait("etcd /health", lambda: httpx.get(f"{client}/health", timeout=2.0).json()["health"] == "true")

    def _start_apiserver(self, bin_dir: Path) -> None:
        pki, port = self._dir / "pki", free_port()
        self.url = f"https://127.0.0.1:{port}"
        token_file = self._dir / "tokens.csv"
        token_file.write_text(
            "".join(
                f'{token},{user},{user},"{",".join(groups)}"\n' for user, groups, token in self._identities.values()
            )
        )
        self._apiserver = ManagedProcess(
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self._dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--token-auth-file={token_file}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                # No controller-manager creates ServiceAccount tokens, so this plugin would refuse pods.
                "--disable-admission-plugins=ServiceAccount",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
            log_path=self._dir / "kube-apiserver.log",
        )
        headers = {"Authorization": f"Bearer {self.token(ADMIN)}"}
        tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._wait(
            "kube-apiserver /readyz",
            lambda: httpx.get(f"{self.url}/readyz", headers=headers, verify=tls, timeout=5.0).text == "ok",
        )

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        """Poll ready() until true, failing fast with the logs if a process died."""
        deadline = time.monotonic() + self.startup_timeout
        last: object = None
        while time.monotonic() < deadline:
            for name, proc in (("etcd", self._etcd), ("kube-apiserver", self._apiserver)):
                if proc is not None and not proc.alive():
                    raise ControlPlaneError(f"{name} exited with {proc.proc.returncode}\n{self.log_tails()}")
            try:
                if ready():
                    return
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                last = exc  # not listening yet, or answering 5xx/non-JSON while starting
            time.sleep(0.1)
        raise ControlPlaneError(f"{what} not ready after {self.startup_timeout}s (last: {last!r})\n{self.log_tails()}")

    def log_tails(self) -> str:
        """The last lines of both logs, for error messages."""
        parts = []
        for name, proc in (("etcd", self._etcd), ("kube-apiserver", self._apiserver)):
            if proc is not None:
                parts.append(f"--- {name} log tail ({proc.log_path}) ---\n{proc.log_text()[-LOG_TAIL_CHARS:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the apiserver, then etcd, and remove the temp dir."""
        for proc in (self._apiserver, self._etcd):
            if proc is not None:
                proc.stop()
        self._apiserver = self._etcd = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
