"""The local stack's monitoring glue, pure parts: what is adjusted in prometheus-operator's
generated configuration (and nothing else), the Prometheus object, Alertmanager's routing."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from dedicap_local import certs, monitoring

GENERATED = {
    "global": {"scrape_interval": "2s",
               "external_labels": {"prometheus": "monitoring/dedicap",
                                   "prometheus_replica": "$(POD_NAME)"}},
    "rule_files": ["/etc/prometheus/rules/prometheus-dedicap-rulefiles-0/*.yaml"],
    "scrape_configs": [{
        "job_name": "serviceMonitor/acme/bot/0",
        "kubernetes_sd_configs": [{"role": "endpointslice", "namespaces": {"names": ["acme"]}}],
        "relabel_configs": [{"source_labels": ["__tmp_hash", "__tmp_disable_sharding"],
                             "regex": "$(SHARD);|.+;.+", "action": "keep"}],
    }],
    "alerting": {"alertmanagers": [{"kubernetes_sd_configs": [{"role": "endpointslice"}]}]},
}


def test_adjust_changes_only_what_makes_sense_inside_a_pod(tmp_path: Path) -> None:
    pki = certs.Pki(tmp_path / "pki")
    out = monitoring.adjust(GENERATED, tmp_path, "https://127.0.0.1:36443", pki)
    assert out["rule_files"] == [
        str(tmp_path / "monitoring" / "rules" / "prometheus-dedicap-rulefiles-0" / "*.yaml")]
    assert out["global"]["external_labels"]["prometheus_replica"] == "local"
    job = out["scrape_configs"][0]
    assert job["relabel_configs"][0]["regex"] == "0;|.+;.+"
    for sd in [*job["kubernetes_sd_configs"],
               *out["alerting"]["alertmanagers"][0]["kubernetes_sd_configs"]]:
        assert sd["api_server"] == "https://127.0.0.1:36443"
        assert sd["tls_config"] == {"ca_file": str(pki.ca_cert),
                                    "cert_file": str(pki.admin_cert),
                                    "key_file": str(pki.admin_key)}
    # Everything else is as generated.
    assert job["kubernetes_sd_configs"][0]["namespaces"] == {"names": ["acme"]}
    assert job["job_name"] == "serviceMonitor/acme/bot/0"
    assert GENERATED["global"]["external_labels"]["prometheus_replica"] == "$(POD_NAME)"


def test_the_prometheus_object_selects_every_monitor_and_rule() -> None:
    spec = monitoring.prometheus_object()["spec"]
    for key in ("serviceMonitor", "podMonitor", "rule"):
        assert spec[f"{key}Selector"] == {} and spec[f"{key}NamespaceSelector"] == {}
    assert spec["replicas"] == 0 and spec["version"] == monitoring.PROMETHEUS_VERSION
    assert spec["alerting"]["alertmanagers"][0]["name"] == monitoring.ALERTMANAGER_SERVICE


def test_alertmanager_routes_to_the_webhook_or_nowhere() -> None:
    hooked = monitoring.alertmanager_config("http://127.0.0.1:5001/alerts")
    assert hooked["route"]["receiver"] == "webhook"
    assert hooked["receivers"][1]["webhook_configs"][0]["url"].endswith("/alerts")
    assert monitoring.alertmanager_config(None)["route"]["receiver"] == "blackhole"


def test_service_addresses_are_in_the_pod_range_away_from_kwoks() -> None:
    net = ipaddress.ip_network("10.244.0.0/16")
    first, second = (monitoring.service_address(i, "10.244.0.0/16") for i in (0, 1))
    assert first != second
    assert ipaddress.ip_address(first) in net and first.startswith("10.244.255.")
