"""A real Kubernetes API server for tests: ../shared/kube-lite over a real etcd.

This mirrors ../shared/kube-lite/start.sh, with one addition the tests need: the API
server can be stopped and started again on the same port and etcd (a restart), and given
extra flags (the watch cache off and fast compaction, for 410 Gone).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.harness import free_port, free_port_pair

ROOT = Path(__file__).resolve().parents[2]
KUBE_LITE = ROOT.parent / "shared" / "kube-lite" / "kube-lite"


def unavailable_reason() -> str | None:
    if shutil.which("etcd") is None:
        return "etcd not installed (apt-get install etcd-server)"
    if not KUBE_LITE.exists():
        return f"kube-lite binary not found at {KUBE_LITE}"
    return None


class KubeLite:
    def __init__(self, state: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.state = state
        self.extra_args = extra_args
        self.etcd_port = free_port_pair(10)  # client port, and +10 for peers as start.sh
        self.api_port = free_port()
        self.kubeconfig = state / "kubeconfig"
        self._etcd: subprocess.Popen[bytes] | None = None
        self._api: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        etcd = shutil.which("etcd")
        assert etcd is not None
        with (self.state / "etcd.log").open("ab") as log:
            self._etcd = subprocess.Popen(
                [
                    etcd,
                    "--data-dir",
                    str(self.state / "etcd-data"),
                    "--listen-client-urls",
                    f"http://127.0.0.1:{self.etcd_port}",
                    "--advertise-client-urls",
                    f"http://127.0.0.1:{self.etcd_port}",
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{self.etcd_port + 10}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.start_api_server()
        ca = sorted((self.state / "certs").glob("*.crt"))[0]
        self.kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: kube-lite
  cluster: {{server: "https://127.0.0.1:{self.api_port}", certificate-authority: "{ca}"}}
users:
- name: anonymous
  user: {{token: kube-lite-does-not-authenticate}}
contexts:
- name: kube-lite
  context: {{cluster: kube-lite, user: anonymous, namespace: default}}
current-context: kube-lite
"""
        )

    def start_api_server(self) -> None:
        with (self.state / "kube-lite.log").open("ab") as log:
            self._api = subprocess.Popen(
                [
                    str(KUBE_LITE),
                    f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                    f"--secure-port={self.api_port}",
                    "--bind-address=127.0.0.1",
                    f"--cert-dir={self.state / 'certs'}",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + 40
        while True:
            try:
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{self.api_port}/readyz", context=context, timeout=1
                ) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self._api.poll() is not None or time.monotonic() > deadline:
                log_text = (self.state / "kube-lite.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"kube-lite did not become ready:\n{log_text}")
            time.sleep(0.1)

    def stop_api_server(self) -> None:
        """Kill it: open watches would hold a graceful stop for a minute, and a crash is
        the harsher restart to survive."""
        if self._api is not None and self._api.poll() is None:
            self._api.kill()
            self._api.wait(10)

    def stop(self) -> None:
        self.stop_api_server()
        if self._etcd is not None and self._etcd.poll() is None:
            self._etcd.terminate()
            self._etcd.wait(10)
