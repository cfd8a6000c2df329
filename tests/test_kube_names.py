"""Pod names and label values for agents: valid for Kubernetes, readable, and unique."""

from __future__ import annotations

import itertools

import pytest

from jupyter_sac.spawner.kube_names import (
    MAX_NAME,
    agent_object_name,
    is_dns_label,
    is_label_value,
    label_value,
)


def test_plain_names_stay_readable() -> None:
    assert agent_object_name("alice", "analyst") == "sac-alice-analyst"
    assert agent_object_name("bob42", "data-cleaner") == "sac-bob42-data-cleaner"


USERS = ["alice", "Alice", "a-b", "a", "bob.smith@example.org", "bob-smith-example-org",
         "x" * 80, "x" * 81, "名前", "名字", "_", "u_1"]  # fmt: skip
AGENTS = ["c", "b-c", "analyst", "a" * 30, "a" * 29 + "b"]


@pytest.mark.parametrize("user,agent", list(itertools.product(USERS, AGENTS)))
def test_every_name_is_a_dns_label(user: str, agent: str) -> None:
    name = agent_object_name(user, agent)
    assert is_dns_label(name), name
    assert len(name) <= MAX_NAME
    assert name.startswith("sac-")


def test_names_are_unique() -> None:
    names = {agent_object_name(u, a) for u, a in itertools.product(USERS, AGENTS)}
    assert len(names) == len(USERS) * len(AGENTS)


def test_ambiguous_split_gets_a_hash() -> None:
    # User "a-b" with agent "c" and user "a" with agent "b-c" would both be sac-a-b-c.
    first, second = agent_object_name("a-b", "c"), agent_object_name("a", "b-c")
    assert first != second
    assert second == "sac-a-b-c"
    assert first.startswith("sac-a-b-c-")


def test_long_names_are_cut_with_a_hash() -> None:
    name = agent_object_name("x" * 80, "analyst")
    assert len(name) == MAX_NAME
    assert name != agent_object_name("x" * 81, "analyst")


@pytest.mark.parametrize("value", ["alice", "Bob.Smith@example.org", "x" * 64, "名前", "-a-", ""])
def test_label_values(value: str) -> None:
    label = label_value(value)
    assert is_label_value(label), label
    if is_label_value(value):
        assert label == value
    else:
        assert label != value


def test_label_values_are_unique() -> None:
    values = ["a@b", "a#b", "a-b", "x" * 64, "x" * 65]
    assert len({label_value(v) for v in values}) == len(values)
