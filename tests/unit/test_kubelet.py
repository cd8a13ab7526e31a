"""The process nodes' pure parts: how a pod's container and its image combine into a command,
an environment and a sandbox, as a kubelet would combine them."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from dedicap_local import kubelet
from dedicap_local.images import Image

POD: dict[str, Any] = {
    "metadata": {"name": "op-1", "namespace": "sys", "uid": "u1", "labels": {"app": "x"}},
    "spec": {"nodeName": "process-0", "serviceAccountName": "op",
             "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
             "containers": [{"name": "operator", "image": "img:1", "command": ["dedicap"],
                             "args": ["run", "--address=$(POD_IP)", "--literal=$$(POD_IP)",
                                      "--unknown=$(NOPE)"],
                             "ports": [{"name": "health", "containerPort": 8080}],
                             "resources": {"limits": {"memory": "512Mi", "cpu": "1500m"}},
                             "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {
                                         "fieldPath": "status.podIP"}}},
                                     {"name": "APP", "valueFrom": {"fieldRef": {
                                         "fieldPath": "metadata.labels['app']"}}},
                                     {"name": "MEM", "valueFrom": {"resourceFieldRef": {
                                         "resource": "limits.memory", "divisor": "1Mi"}}},
                                     {"name": "CPU", "valueFrom": {"resourceFieldRef": {
                                         "resource": "limits.cpu"}}},
                                     {"name": "URL", "value": "http://$(POD_IP):1"}],
                             "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}]},
    "status": {"podIP": "10.9.0.2"},
}
IMAGE = Image(reference="img:1", digest="sha256:x", rootfs=Path("/nonexistent"),
              entrypoint=("/usr/local/bin/dedicap",), cmd=("run",),
              env=("PATH=/usr/local/bin:/usr/bin", "APP=image"), user="65532:65532")


def _no_lookup(*_: str) -> str:
    raise AssertionError("no ConfigMap or Secret expected")


def test_command_args_and_env_combine_as_kubernetes_does() -> None:
    plan = kubelet.plan_container(POD, IMAGE, {"KUBERNETES_SERVICE_HOST": "127.0.0.1"},
                                  _no_lookup)
    assert plan.argv == ("dedicap", "run", "--address=10.9.0.2", "--literal=$(POD_IP)",
                         "--unknown=$(NOPE)")
    assert plan.env["APP"] == "x" and plan.env["PATH"] == "/usr/local/bin:/usr/bin"
    assert plan.env["MEM"] == "512" and plan.env["CPU"] == "2"
    assert plan.env["URL"] == "http://10.9.0.2:1"
    assert plan.env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert (plan.uid, plan.gid) == (65532, 65532) and plan.mounts == (("tmp", "/tmp", False),)


def test_image_entrypoint_and_cmd_fill_in_what_the_pod_leaves_out() -> None:
    container = {"name": "c", "image": "img:1"}
    pod = {**POD, "spec": {**POD["spec"], "containers": [container]}}
    assert kubelet.plan_container(pod, IMAGE, {}, _no_lookup).argv == (
        "/usr/local/bin/dedicap", "run")
    pod["spec"]["containers"] = [{**container, "args": ["crds", "--check"]}]
    assert kubelet.plan_container(pod, IMAGE, {}, _no_lookup).argv == (
        "/usr/local/bin/dedicap", "crds", "--check")


def test_run_as_non_root_refuses_a_root_user() -> None:
    pod = {**POD, "spec": {**POD["spec"], "securityContext": {"runAsNonRoot": True}}}
    root_image = Image(reference="r", digest="d", rootfs=Path("/nonexistent"),
                       entrypoint=("x",))
    with pytest.raises(kubelet.PodError, match="runAsNonRoot"):
        kubelet.plan_container(pod, root_image, {}, _no_lookup)


def test_sandbox_mounts_the_image_read_only_and_the_volumes_as_asked(tmp_path: Path) -> None:
    plan = kubelet.plan_container(POD, IMAGE, {}, _no_lookup)
    argv = kubelet.bwrap_argv(tmp_path, plan, {"tmp": (tmp_path / "v", False)}, "op-1")
    assert argv[:4] == ["bwrap", "--ro-bind", str(tmp_path), "/"]
    assert ["--bind", str(tmp_path / "v"), "/tmp"] == argv[argv.index("--bind"):][:3]
    assert argv[argv.index("--uid") + 1] == "65532" and "--unshare-user" in argv
    assert argv[argv.index("--hostname") + 1] == "op-1"
    assert argv[argv.index("--") + 1:] == list(plan.argv)
    with pytest.raises(kubelet.PodError, match="not defined"):
        kubelet.bwrap_argv(tmp_path, plan, {}, "op-1")


def test_named_probe_ports_resolve_to_the_pod_address() -> None:
    probe = {"httpGet": {"path": "/readyz", "port": "health"}}
    assert kubelet.probe_target(POD, probe) == ("http", "10.9.0.2", 8080, "/readyz")
    assert kubelet.probe_target(POD, {"tcpSocket": {"port": 9}})[:3] == ("tcp", "10.9.0.2", 9)
    with pytest.raises(kubelet.PodError):
        kubelet.probe_target(POD, {"exec": {"command": ["true"]}})


def test_mount_points_follow_the_images_links_inside_the_image(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to("/run")
    (tmp_path / "escape").symlink_to("/../../..")
    assert kubelet.inside(tmp_path, "/var/run/secrets") == tmp_path / "run" / "secrets"
    assert kubelet.inside(tmp_path, "/escape/etc") == tmp_path / "etc"


def test_each_process_node_has_its_own_range_far_from_kwok() -> None:
    first, second = kubelet.node_range("10.244.0.0/16", 0), kubelet.node_range("10.244.0.0/16", 1)
    assert first != second and not first.overlaps(second)
    assert first.subnet_of(ipaddress.IPv4Network("10.244.0.0/16"))
    assert ipaddress.ip_address("10.244.0.2") not in first
    assert kubelet.free_address(first, [str(list(first.hosts())[1])]) == str(
        list(first.hosts())[2])


def test_downward_api_fields() -> None:
    assert kubelet.field_value(POD, "metadata.name") == "op-1"
    assert kubelet.field_value(POD, "spec.serviceAccountName") == "op"
    with pytest.raises(kubelet.PodError):
        kubelet.field_value(POD, "status.phase")
