"""The Helm chart's ClusterRole is enough: the operator, logged in as the chart's
ServiceAccount (a real token, RBAC enforced by the API server), serves a ModelDeployment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rbac_kubeconfig(stack: Any, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    release = f"dcp-rbac-{uuid.uuid4().hex[:6]}"
    helm = str(Path(stack.binary("kubectl")).parent / "helm")
    rendered = subprocess.run(
        [helm, "template", release, str(ROOT / "charts" / "dedicap"), "--namespace", release,
         "--kube-version", "1.35.0", "--show-only", "templates/serviceaccount.yaml",
         "--show-only", "templates/rbac.yaml"],
        check=True, capture_output=True, text=True).stdout
    stack.kubectl("create", "namespace", release)
    stack.kubectl("apply", "-f", "-", input=rendered)
    token = stack.kubectl("create", "token", release, "-n", release).stdout.strip()
    config = json.loads(stack.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    yield path, release
    stack.kubectl("delete", "clusterrolebinding", release, "--ignore-not-found", check=False)
    stack.kubectl("delete", "clusterrole", release, "--ignore-not-found", check=False)
    stack.kubectl("delete", "namespace", release, "--wait=false", check=False)


def test_operator_works_with_the_charts_rbac_only(stack: Any, rbac_kubeconfig: tuple[Path, str],
                                                  tmp_path: Path) -> None:
    kubeconfig, release = rbac_kubeconfig
    stack.kubectl("apply", "-f", str(ROOT / "crds"))
    stack.kubectl("apply", "-f", str(ROOT / "deploy" / "examples" / "gpupools.yaml"))
    # The service account may not do what it does not need.
    denied = stack.kubectl("--as", f"system:serviceaccount:{release}:{release}", "auth",
                           "can-i", "delete", "nodes", check=False)
    assert denied.stdout.strip() == "no"
    namespace = f"{release}-md"
    stack.kubectl("create", "namespace", namespace)
    log = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dedicap.cli", "run", "--namespace", namespace,
             "--peering", release, "--pool-refresh-seconds", "2"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            doc = yaml.safe_load((ROOT / "deploy/examples/modeldeployment-fixed.yaml").read_text())
            doc["metadata"]["namespace"] = namespace
            stack.kubectl("apply", "-f", "-", input=json.dumps(doc))
            done = stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", namespace,
                                 "--timeout=90s", check=False)
            text = log.read_text(errors="replace")
            assert done.returncode == 0, text[-3000:]
            assert "Forbidden" not in text and " 403" not in text, text[-3000:]
            events = json.loads(stack.kubectl("get", "events", "-n", namespace, "-o",
                                              "json").stdout)["items"]
            assert any(e["reason"] == "Created" for e in events)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            time.sleep(0.5)
            stack.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
            stack.kubectl("delete", "clusterkopfpeering", release, "--ignore-not-found",
                          check=False)
