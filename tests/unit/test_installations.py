"""Which installation acts where: the most specific scope for a namespace, one for the
cluster-scoped work, and the peering rule inside an installation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dedicap.controller.peering import (
    Installation,
    cluster_owner,
    installations,
    owner_of,
    serves,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def entry(peering: str, namespaces: list[str], age_s: float = 0, lifetime: int = 30
          ) -> dict[str, object]:
    return {"priority": 1, "lifetime": lifetime, "peering": peering, "namespaces": namespaces,
            "lastseen": (NOW - timedelta(seconds=age_s)).isoformat()}


def test_live_installations_from_the_registry() -> None:
    registry = {"p1": entry("demo", []), "p2": entry("demo", []),
                "p3": entry("tests", ["dcp-*"]), "dead": entry("old", [], age_s=60),
                "junk": {"lastseen": "not a time"}, "odd": "x"}
    assert installations(registry, NOW) == [Installation("demo", ()),
                                           Installation("tests", ("dcp-*",))]
    assert installations(None, NOW) == []


def test_the_most_specific_scope_owns_a_namespace() -> None:
    live = [Installation("all", ()), Installation("teams", ("team-*",)),
            Installation("a", ("team-a",))]
    assert owner_of("team-a", live) == "a"  # exact beats pattern beats all
    assert owner_of("team-b", live) == "teams"
    assert owner_of("other", live) == "all"
    assert owner_of("other", live[1:]) is None  # nobody serves it
    # Equally specific (a misconfiguration): one of them, the same every time.
    tie = [Installation("y", ("x",)), Installation("b", ("x",))]
    assert owner_of("x", tie) == "b" == owner_of("x", list(reversed(tie)))


def test_one_installation_does_the_cluster_work() -> None:
    assert cluster_owner([Installation("teams", ("t-*",)), Installation("all", ())]) == "all"
    assert cluster_owner([Installation("b", ("x",)), Installation("a", ("y",))]) == "a"
    assert cluster_owner([Installation("wide", ("x", "y")), Installation("a", ("z",))]) == "wide"
    assert cluster_owner([]) is None


def test_scope_globs() -> None:
    assert serves((), "anything")
    assert serves(("team-*", "acme"), "team-x") and serves(("acme",), "acme")
    assert not serves(("team-*",), "acme")
