"""Reading ``/metrics`` in tests with prometheus-client's own parser: a series that is missing, or whose
labels are not the ones asked for, is an error here, never a silent 0."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str, name: str, **labels: str) -> list[float]:
    """The values of every sample called ``name`` whose labels include ``labels`` (an empty list if none)."""
    found: list[float] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                found.append(sample.value)
    return found


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the matching samples; fails when no sample of ``name`` carries ``labels``."""
    found = samples(text, name, **labels)
    assert found, f"no series {name}{labels} in /metrics"
    return sum(found)
