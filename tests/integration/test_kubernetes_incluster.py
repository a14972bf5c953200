"""
The Kubernetes API source with no kubeconfig: the pod's service account, as
a pod sees it (C{KUBERNETES_SERVICE_HOST}/C{_PORT}, the token and CA under
C{/var/run/secrets/kubernetes.io/serviceaccount}), and a token the kubelet
rotates in place. meshdns runs in a mount namespace of its own where a tmpfs
over C{/run} holds the service account files, so the host's are untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.kubeapi import FakeKubeAPI
from tests.support.kubeobjects import service
from tests.support.processes import (
    LOOPBACK,
    TWISTD,
    MeshdnsProcess,
    child_env,
    free_port,
    stop_process,
    wait_until_answering,
)
from tests.support.required import require_command, unavailable
from tests.support.waiting import wait_until

ACCOUNT = "/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture
def in_cluster(tmp_path: Path) -> Iterator[tuple[FakeKubeAPI, MeshdnsProcess]]:
    if os.geteuid() != 0:
        unavailable("a mount namespace needs root")
    require_command("unshare", "util-linux")
    api = FakeKubeAPI(tokens=("first-token",))
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("first-token")
    shutil.copy(api.ca_path, account / "ca.crt")
    (account / "namespace").write_text("shop")
    port = free_port()
    config = tmp_path / "meshdns.yaml"
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("")
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"address": LOOPBACK, "port": port},
                "admin": {"port": 0},
                "upstream": {"resolv_conf": str(resolv)},
                "mesh": {"namespace": "shop"},
                "kubernetes": {"enabled": True},
            }
        )
    )
    setup = (
        f"mount -t tmpfs meshdns-test /run && mkdir -p {ACCOUNT} && "
        f'cp {account}/token {account}/ca.crt {account}/namespace {ACCOUNT}/ && exec "$@"'
    )
    env = {
        **child_env(),
        "KUBERNETES_SERVICE_HOST": api.host,
        "KUBERNETES_SERVICE_PORT": str(api.port),
    }
    log_path = tmp_path / "meshdns.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                setup,
                "sh",
                *TWISTD,
                "meshdns",
                "--config",
                str(config),
            ],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    meshdns = MeshdnsProcess(LOOPBACK, port, process, tmp_path, config, log_path)
    try:
        wait_until_answering(meshdns)
        yield api, meshdns
    finally:
        stop_process(process)
        api.close()


def answer(meshdns: MeshdnsProcess, name: str) -> list[str]:
    reply = meshdns.query(name)
    return sorted(r.address for rrset in reply.answer for r in rrset if hasattr(r, "address"))


def test_service_account_and_a_rotated_token(
    in_cluster: tuple[FakeKubeAPI, MeshdnsProcess],
) -> None:
    api, meshdns = in_cluster
    api.create(service("shop", "web", "10.96.0.10"))
    wait_until(lambda: answer(meshdns, "web.shop.svc.cluster.local") == ["10.96.0.10"], "web")
    assert {r.token for r in api.requests} == {"first-token"}
    # The kubelet writes the new token in place; the old one stops working.
    token = Path(f"/proc/{meshdns.process.pid}/root{ACCOUNT}/token")
    token.write_text("second-token")
    api.rotate_token("second-token")
    api.cut_watches(mid_event=False)
    api.create(service("shop", "after", "10.96.0.11"))
    wait_until(
        lambda: answer(meshdns, "after.shop.svc.cluster.local") == ["10.96.0.11"],
        "a Service created after the rotation",
        timeout=30.0,
    )
    assert any(r.token == "second-token" and r.status == 200 for r in api.requests)
