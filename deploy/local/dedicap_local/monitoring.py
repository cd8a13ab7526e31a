"""Monitoring on the local stack as a cluster has it: prometheus-operator turns the shipped
ServiceMonitor / PodMonitor / PrometheusRule objects into Prometheus' configuration, Debian's
Prometheus runs that configuration (discovering targets through the API server), and Debian's
Alertmanager receives its alerts.

- `prometheus-operator` (built from the Go module proxy, see build-binaries.sh) runs against the
  stack's API server with the `Prometheus` object `monitoring/dedicap`: `replicas: 0` (it has
  nothing to schedule; Prometheus runs here instead), every ServiceMonitor, PodMonitor and
  PrometheusRule of every namespace selected, EndpointSlice discovery, alerts to the Service
  `monitoring/alertmanager`.
- The sync loop (`python -m dedicap_local.monitoring sync`, the config reloader's job) copies
  what the operator generates (Secret `prometheus-dedicap`, key `prometheus.yaml.gz`; ConfigMaps
  `prometheus-dedicap-rulefiles-N`) under `run_dir/monitoring/` and reloads Prometheus. It
  adjusts what only makes sense inside a pod, and nothing else (`adjust`):
  * paths under `/etc/prometheus/` (rule files, TLS assets) move under `run_dir/monitoring/`;
  * every `kubernetes_sd_configs` entry gets `api_server` and `tls_config` (the stack's CA and
    client certificate) in place of the in-cluster service account;
  * what the config reloader expands from the pod's environment: `$(POD_NAME)` (the replica's
    external label) becomes `local`, `$(SHARD)` (the sharding relabeling) becomes `0`.
- Prometheus (`prometheus-monitoring`, port 39091) is a second one beside the stack's own, and
  not Debian's: Debian's 2.42 is built without Kubernetes service discovery, so this one is
  Prometheus 3.5 built from the Go module proxy (build-binaries.sh). The stack's own Prometheus
  (Debian's) keeps file-based discovery for tests that run pods without a ModelDeployment.
- Alertmanager listens on an address of the pod range (routed to the loopback device), and the
  Service `monitoring/alertmanager` has an EndpointSlice pointing at it, so Prometheus finds it
  through the API server like any Alertmanager in a cluster. Where its notifications go is
  `set_receiver(url)` (a webhook).
- `expose(stack, namespace, service, port_name, address, port)`: the same for any process of
  the stack (the dedicap operator's /metrics): a selector-less Service's EndpointSlice.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import ipaddress
import json
import logging
import shutil
import threading
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dedicap_local import certs, chart, procs
from dedicap_local import stack as stk

LOG = logging.getLogger("dedicap.monitoring")

NAMESPACE = "monitoring"
PROMETHEUS_OBJECT = "dedicap"
ALERTMANAGER_SERVICE = "alertmanager"
PROMETHEUS_PORT = 39091 + stk.PORT_OFFSET
OPERATOR_WEB_PORT = 38080 + stk.PORT_OFFSET
ALERTMANAGER_PORT = 9093
SCRAPE_INTERVAL = "2s"


def _pin(name: str) -> str:
    """A pin of deploy/local/versions.env (the one place versions are written)."""
    for line in (stk.LOCAL_DIR / "versions.env").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == name:
            return value.strip()
    raise KeyError(f"{name} is not pinned in versions.env")


PROMETHEUS_VERSION = _pin("PROMETHEUS_VERSION")
POD_PREFIX = "/etc/prometheus/"
GENERATED_SECRET = f"prometheus-{PROMETHEUS_OBJECT}"
RULEFILES_LABEL = f"prometheus-name={PROMETHEUS_OBJECT}"
PROCESSES = ("monitoring-sync", "prometheus-monitoring", "alertmanager", "prometheus-operator")
# The chart's release whose monitoring objects are installed (`install_chart_monitoring`).
RELEASE, RELEASE_NAMESPACE = "dedicap", "dedicap-system"
OPERATOR_METRICS_PORT = 9464
CHART_MONITORING = ("templates/metrics-service.yaml", "templates/servicemonitor.yaml",
                    "templates/prometheusrule.yaml")


def service_address(index: int, cidr: str = stk.POD_CIDR) -> str:
    """An address of the pod range that kwok never hands out (from the top of the range), for
    processes of the stack that a Service must point at: 0 Alertmanager, 1 the operator."""
    net = ipaddress.ip_network(cidr)
    return str(net[-(index + 3)])


def home(run_dir: Path) -> Path:
    return run_dir / "monitoring"


def prometheus_url() -> str:
    return f"http://127.0.0.1:{PROMETHEUS_PORT}"


def alertmanager_url() -> str:
    return f"http://{service_address(0)}:{ALERTMANAGER_PORT}"


def crds_dir(stack: stk.Stack) -> Path:
    return (stack.bin_dir / "prometheus-operator-crds").resolve()  # kubectl: no link to a dir


# --------------------------------------------------------------------------- pure parts


def prometheus_object(scrape_interval: str = SCRAPE_INTERVAL) -> dict[str, Any]:
    """The `Prometheus` object the operator generates the configuration for."""
    everything: dict[str, Any] = {}
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
        "metadata": {"name": PROMETHEUS_OBJECT, "namespace": NAMESPACE},
        "spec": {
            "version": PROMETHEUS_VERSION,  # the operator writes what that version reads
            "replicas": 0,
            "serviceDiscoveryRole": "EndpointSlice",
            "scrapeInterval": scrape_interval,
            "evaluationInterval": scrape_interval,
            "serviceMonitorSelector": everything, "serviceMonitorNamespaceSelector": everything,
            "podMonitorSelector": everything, "podMonitorNamespaceSelector": everything,
            "ruleSelector": everything, "ruleNamespaceSelector": everything,
            "alerting": {"alertmanagers": [{"namespace": NAMESPACE, "name": ALERTMANAGER_SERVICE,
                                            "port": "web", "apiVersion": "v2"}]},
        },
    }


def adjust(config: Mapping[str, Any], run_dir: Path, server: str, pki: certs.Pki
           ) -> dict[str, Any]:
    """The generated configuration as this machine's Prometheus runs it (see the module doc)."""
    out: dict[str, Any] = _move_paths(copy.deepcopy(dict(config)), home(run_dir))
    tls = {"ca_file": str(pki.ca_cert), "cert_file": str(pki.admin_cert),
           "key_file": str(pki.admin_key)}
    sections = [*(out.get("scrape_configs") or []),
                *((out.get("alerting") or {}).get("alertmanagers") or [])]
    for section in sections:
        for sd in section.get("kubernetes_sd_configs") or []:
            sd["api_server"] = server
            sd["tls_config"] = dict(tls)
    return out


# What the config reloader expands from the pod's environment: this Prometheus is the only
# replica of the only shard.
POD_ENVIRONMENT = {"$(POD_NAME)": "local", "$(SHARD)": "0"}


def _move_paths(value: Any, to: Path) -> Any:
    if isinstance(value, str) and value.startswith(POD_PREFIX):
        return str(to / value[len(POD_PREFIX):])
    if isinstance(value, str):
        for name, replacement in POD_ENVIRONMENT.items():
            value = value.replace(name, replacement)
        return value
    if isinstance(value, dict):
        return {k: _move_paths(v, to) for k, v in value.items()}
    if isinstance(value, list):
        return [_move_paths(v, to) for v in value]
    return value


def alertmanager_config(receiver_url: str | None) -> dict[str, Any]:
    """Group by ModelDeployment, notify at once (a test waits on it), repeat hourly."""
    receivers: list[dict[str, Any]] = [{"name": "blackhole"}]
    route: dict[str, Any] = {
        "receiver": "blackhole", "group_by": ["alertname", "namespace", "modeldeployment"],
        "group_wait": "1s", "group_interval": "5s", "repeat_interval": "1h"}
    if receiver_url:
        receivers.append({"name": "webhook", "webhook_configs": [
            {"url": receiver_url, "send_resolved": True}]})
        route["receiver"] = "webhook"
    return {"route": route, "receivers": receivers}


# --------------------------------------------------------------------------- the processes


def _binary(name: str, *candidates: str) -> str:
    for candidate in (name, *candidates):
        found = shutil.which(candidate)
        if found:
            return found
    raise FileNotFoundError(f"{name} not found: install Debian's {name} (make setup)")


def set_receiver(run_dir: Path, url: str | None) -> None:
    """Send every alert to the webhook `url` (None: nowhere) and reload Alertmanager."""
    path = home(run_dir) / "alertmanager.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(alertmanager_config(url), sort_keys=False))
    if procs.running_pid(run_dir, "alertmanager") is not None:
        _post(alertmanager_url() + "/-/reload")


def _post(url: str) -> None:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def expose(stack: stk.Stack, namespace: str, service: str, port_name: str, address: str,
           port: int, labels: Mapping[str, str] | None = None, *, selectorless: bool = True
           ) -> None:
    """Point Service `namespace/service` at `address:port` through an EndpointSlice of its own,
    as a cluster's endpoints would point at a pod. With `selectorless`, the Service is created
    (or updated) without a selector; otherwise it must exist already (e.g. from the chart) and
    its selector is removed, so the EndpointSlice controller leaves this slice alone."""
    if selectorless:
        svc = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": service, "namespace": namespace,
                            "labels": dict(labels or {})},
               "spec": {"ports": [{"name": port_name, "port": port, "targetPort": port}]}}
        stack.kubectl("apply", "--server-side", "--field-manager=dedicap-local", "-f", "-",
                      input=json.dumps(svc))
    else:
        stack.kubectl("patch", "service", service, "-n", namespace, "--type=json",
                      "-p", '[{"op": "remove", "path": "/spec/selector"}]', check=False)
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": f"{service}-local", "namespace": namespace,
                        "labels": {"kubernetes.io/service-name": service,
                                   "endpointslice.kubernetes.io/managed-by": "dedicap-local"}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
           "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}
    stack.kubectl("apply", "--server-side", "--field-manager=dedicap-local", "-f", "-",
                  input=json.dumps(eps))


def operator_metrics_address() -> str:
    """Where `dedicap run` serves /metrics on the local stack (`--metrics-address`), so that
    the chart's metrics Service can point at it."""
    return service_address(1)


def chart_monitoring_objects(stack: stk.Stack, groups: list[dict[str, Any]] | None = None,
                             scrape_interval: str = SCRAPE_INTERVAL) -> list[dict[str, Any]]:
    """The chart's metrics Service, ServiceMonitor and PrometheusRule (`helm template`, as
    `helm install` would create them). `groups` replaces the rule groups (a live test's
    compressed windows); the object is otherwise the chart's."""
    rendered = chart.template(stack, RELEASE, RELEASE_NAMESPACE, show_only=CHART_MONITORING,
                              values=["monitoring.serviceMonitor.enabled=true",
                                      f"monitoring.serviceMonitor.interval={scrape_interval}",
                                      "monitoring.prometheusRule.enabled=true"]).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    for obj in objects:
        if obj["kind"] == "PrometheusRule" and groups is not None:
            obj["spec"] = {"groups": groups}
    return objects


def install_chart_monitoring(stack: stk.Stack, groups: list[dict[str, Any]] | None = None
                             ) -> list[dict[str, Any]]:
    """Apply the chart's monitoring objects and point its metrics Service at the operator's
    address on this machine (no operator pod runs here); returns the objects."""
    stack.kubectl("create", "namespace", RELEASE_NAMESPACE, check=False)
    objects = chart_monitoring_objects(stack, groups)
    stack.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=helm",
                  "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                               "items": objects}))
    service = next(o for o in objects if o["kind"] == "Service")
    expose(stack, RELEASE_NAMESPACE, service["metadata"]["name"], "metrics",
           operator_metrics_address(), OPERATOR_METRICS_PORT, selectorless=False)
    return objects


def up(stack: stk.Stack, *, receiver_url: str | None = None) -> str:
    """Start (or keep) prometheus-operator, the monitoring Prometheus and Alertmanager; return
    the Prometheus URL. Idempotent."""
    run_dir = stack.run_dir
    pki = certs.ensure(run_dir / "pki")
    h = home(run_dir)
    for path in (h / "data", h / "rules", h / "alertmanager-data"):
        path.mkdir(parents=True, exist_ok=True)
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds_dir(stack)),
                  timeout=180)
    stack.wait_established(*(f"{kind}.monitoring.coreos.com"
                             for kind in ("prometheuses", "servicemonitors", "prometheusrules")))
    stack.kubectl("create", "namespace", NAMESPACE, check=False)
    # Alertmanager on its own pod-range address, found through its Service like in a cluster.
    if not (h / "alertmanager.yml").exists() or receiver_url is not None:
        set_receiver(run_dir, receiver_url)
    am_address = service_address(0)
    procs.start(run_dir, "alertmanager", [
        _binary("prometheus-alertmanager", "alertmanager"),
        f"--config.file={h / 'alertmanager.yml'}", f"--storage.path={h / 'alertmanager-data'}",
        f"--web.listen-address={am_address}:{ALERTMANAGER_PORT}",
        "--cluster.listen-address=", "--log.level=warn"])
    expose(stack, NAMESPACE, ALERTMANAGER_SERVICE, "web", am_address, ALERTMANAGER_PORT,
           {"app.kubernetes.io/name": "alertmanager"})
    stack.kubectl("apply", "--server-side", "--field-manager=dedicap-local", "-f", "-",
                  input=json.dumps(prometheus_object()))
    procs.start(run_dir, "prometheus-operator", [
        stack.binary("prometheus-operator"), f"--apiserver={stack.server}",
        f"--ca-file={pki.ca_cert}", f"--cert-file={pki.admin_cert}",
        f"--key-file={pki.admin_key}", f"--web.listen-address=127.0.0.1:{OPERATOR_WEB_PORT}",
        "--log-level=warn"])
    config = h / "prometheus.yml"
    if not config.exists():
        config.write_text(yaml.safe_dump({"global": {"scrape_interval": SCRAPE_INTERVAL}}))
    procs.start(run_dir, "prometheus-monitoring", [
        stack.binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={h / 'data'}",
        "--storage.tsdb.retention.time=2d", f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
        "--web.enable-lifecycle", "--log.level=warn"], cwd=h)
    import sys

    procs.start(run_dir, "monitoring-sync", [
        sys.executable, "-m", "dedicap_local.monitoring", "sync",
        "--kubeconfig", str(stack.kubeconfig), "--run-dir", str(run_dir),
        "--server", stack.server])
    url = prometheus_url()
    procs.wait_for(lambda: procs.http_ok(url + "/-/ready"), "monitoring prometheus", 60,
                   run_dir / "logs" / "prometheus-monitoring.log")
    procs.wait_for(lambda: procs.http_ok(alertmanager_url() + "/-/ready"), "alertmanager", 60,
                   run_dir / "logs" / "alertmanager.log")
    return url


def down(run_dir: Path) -> None:
    for name in PROCESSES:
        procs.stop(run_dir, name)


def status(run_dir: Path) -> dict[str, bool]:
    return {name: procs.running_pid(run_dir, name) is not None for name in PROCESSES}


# --------------------------------------------------------------------------- the sync loop


class Syncer:
    """Copies the operator's generated configuration and rules to disk; reloads on change."""

    def __init__(self, run_dir: Path, server: str, prometheus: str) -> None:
        self.run_dir = run_dir
        self.server = server
        self.prometheus = prometheus
        self.pki = certs.ensure(run_dir / "pki")
        self._last: str | None = None

    def apply(self, secret_data: Mapping[str, str] | None,
              rule_configmaps: Mapping[str, Mapping[str, str]]) -> bool:
        """Write what changed; True if Prometheus was told to reload."""
        import base64

        h = home(self.run_dir)
        if secret_data is None or "prometheus.yaml.gz" not in secret_data:
            return False
        raw = gzip.decompress(base64.b64decode(secret_data["prometheus.yaml.gz"]))
        config = adjust(yaml.safe_load(raw) or {}, self.run_dir, self.server, self.pki)
        rules_root = h / "rules"
        files = {rules_root / cm / key: text for cm, data in rule_configmaps.items()
                 for key, text in data.items()}
        state = json.dumps([config, sorted((str(k), v) for k, v in files.items())],
                           sort_keys=True)
        if state == self._last:
            return False
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
        for path in rules_root.glob("*/*"):
            if path not in files:
                path.unlink()
        _atomic_write(h / "prometheus.yml", yaml.safe_dump(config, sort_keys=False))
        try:
            _post(self.prometheus + "/-/reload")
        except OSError as err:
            LOG.warning("reload of %s failed: %s", self.prometheus, err)
            return False
        self._last = state
        LOG.info("configuration synced: %d scrape jobs, %d rule files",
                 len(config.get("scrape_configs") or []), len(files))
        return True


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def sync(kubeconfig: Path, run_dir: Path, server: str, stop: threading.Event,
         period_s: float = 1.0) -> None:
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    syncer = Syncer(run_dir, server, prometheus_url())
    while not stop.is_set():
        try:
            try:
                secret = api.read_namespaced_secret(GENERATED_SECRET, NAMESPACE,
                                                    _request_timeout=10)
                data: dict[str, str] | None = {k: str(v) for k, v in (secret.data or {}).items()}
            except ApiException as err:
                if err.status != 404:
                    raise
                data = None
            cms = api.list_namespaced_config_map(NAMESPACE, label_selector=RULEFILES_LABEL,
                                                 _request_timeout=10)
            syncer.apply(data, {str(cm.metadata.name if cm.metadata else ""): cm.data or {}
                                for cm in cms.items})
        except Exception as err:
            LOG.warning("sync failed: %s", err)
        stop.wait(period_s)


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = argparse.ArgumentParser(prog="python -m dedicap_local.monitoring")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_sync = sub.add_parser("sync", help="copy the generated configuration; reload on change")
    p_sync.add_argument("--kubeconfig", type=Path, required=True)
    p_sync.add_argument("--run-dir", type=Path, required=True)
    p_sync.add_argument("--server", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        sync(args.kubeconfig, args.run_dir, args.server, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
