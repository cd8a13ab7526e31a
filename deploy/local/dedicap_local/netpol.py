"""What NetworkPolicies allow, evaluated from the objects themselves. Pure.

The local stack has no CNI plugin, so nothing enforces NetworkPolicies on it. This evaluator
follows the semantics of `networking.k8s.io/v1` as the API reference and the network policy
conformance tests define them, so that tests can ask "may this source reach this pod on this
port?" of the policies the operator really wrote, with the real labels of namespaces and pods
read from the API server:

- a pod is *isolated* for a direction when at least one policy of its namespace selects it
  (`podSelector`, `{}` selecting all) and lists that direction in `policyTypes` (absent:
  Ingress, plus Egress when the policy has an `egress` section); traffic to a pod not isolated
  for ingress is allowed, from a pod not isolated for egress likewise;
- an isolated pod admits traffic that at least one rule of one selecting policy allows: the
  union of all policies, never an intersection;
- a rule allows a peer and a port when any of its `from`/`to` peers matches (absent or empty:
  every peer) and any of its `ports` matches (absent or empty: every port);
- a peer with only `podSelector` means pods of the policy's own namespace; with only
  `namespaceSelector`, every pod of the selected namespaces; with both, the selected pods of the
  selected namespaces; `ipBlock` matches addresses in `cidr` and outside every `except`
  (it is meant for addresses outside the cluster; whether a CNI applies it to pod addresses
  varies, and here it does);
- a port is a number or the name of a container port of the destination pod (resolved with the
  protocol), with an optional `endPort` range; the protocol defaults to TCP; a port entry
  without `port` means every port of its protocol;
- label selectors have `matchLabels` and `matchExpressions` (In, NotIn, Exists,
  DoesNotExist); `{}` selects everything.

A connection between two pods needs both the destination's ingress and the source's egress to
allow it. Sources outside the cluster (an address only) have no egress side.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str]
    ip: str = ""
    # Named container ports: (name, protocol) -> number.
    ports: Mapping[tuple[str, str], int] = field(default_factory=dict)

    @staticmethod
    def of(raw: Mapping[str, Any]) -> Pod:
        meta = raw.get("metadata") or {}
        ports = {}
        for c in (raw.get("spec") or {}).get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name"):
                    ports[(p["name"], p.get("protocol", "TCP"))] = int(p["containerPort"])
        return Pod(meta.get("namespace", ""), meta.get("name", ""),
                   dict(meta.get("labels") or {}), (raw.get("status") or {}).get("podIP", ""),
                   ports)


@dataclass(frozen=True)
class External:
    """A source or destination outside the cluster: an address only."""

    ip: str


Endpoint = Pod | External


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector against labels; `{}` selects everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {op!r}")
    return True


def policy_types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy.get("spec") or {}
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if "egress" in spec else [])]


def _peer_matches(peer: Mapping[str, Any], policy_ns: str, other: Endpoint,
                  namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        if not other.ip:
            return False
        addr = ipaddress.ip_address(other.ip)
        return addr in ipaddress.ip_network(block["cidr"], strict=False) and not any(
            addr in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [])
    if not isinstance(other, Pod):
        return False  # selectors select pods only
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespaces.get(other.namespace, {})):
            return False
    elif other.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def _port_matches(entry: Mapping[str, Any], port: int, protocol: str, dest: Endpoint) -> bool:
    if entry.get("protocol", "TCP") != protocol:
        return False
    if "port" not in entry:
        return True
    wanted = entry["port"]
    if isinstance(wanted, str):
        if not isinstance(dest, Pod) or (wanted, protocol) not in dest.ports:
            return False
        wanted = dest.ports[(wanted, protocol)]
    end = entry.get("endPort", wanted)
    return int(wanted) <= port <= int(end)


def _rules_allow(rules: Iterable[Mapping[str, Any]], peers_key: str, policy_ns: str,
                 other: Endpoint, dest: Endpoint, port: int, protocol: str,
                 namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    for rule in rules:
        peers = rule.get(peers_key) or []
        if peers and not any(_peer_matches(p, policy_ns, other, namespaces) for p in peers):
            continue
        ports = rule.get("ports") or []
        if ports and not any(_port_matches(e, port, protocol, dest) for e in ports):
            continue
        return True
    return False


def _direction_allows(direction: str, policies: Sequence[Mapping[str, Any]], subject: Pod,
                      other: Endpoint, dest: Endpoint, port: int, protocol: str,
                      namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    applying = [p for p in policies
                if (p.get("metadata") or {}).get("namespace") == subject.namespace
                and selects((p.get("spec") or {}).get("podSelector", {}), subject.labels)
                and direction in policy_types(p)]
    if not applying:
        return True  # not isolated in this direction
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    return any(_rules_allow((p.get("spec") or {}).get(key) or [], peers_key,
                            p["metadata"]["namespace"], other, dest, port, protocol, namespaces)
               for p in applying)


def allowed(policies: Sequence[Mapping[str, Any]], namespaces: Mapping[str, Mapping[str, str]],
            source: Endpoint, dest: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Whether `source` may open a connection to `dest` on `port` under `policies` (every
    NetworkPolicy of the cluster; `namespaces`: every namespace's labels)."""
    if isinstance(dest, Pod) and not _direction_allows(
            "Ingress", policies, dest, source, dest, port, protocol, namespaces):
        return False
    return not isinstance(source, Pod) or _direction_allows(
        "Egress", policies, source, dest, dest, port, protocol, namespaces)
