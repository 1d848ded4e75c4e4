"""constraints.txt, the lock that `make setup` and the Docker image install from, covers pyproject.toml: every
dependency and extra is pinned exactly, at a version its requirement allows, and torch without a local label
(so the CPU wheel and PyPI's CUDA build both match it). After changing a dependency: `make lock`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "constraints.txt"


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;,]+)", line)
        assert match, f"constraints.txt:{number}: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [("dependencies", Requirement(text)) for text in project["dependencies"]]
    for extra, texts in project.get("optional-dependencies", {}).items():
        found += [(f"[{extra}]", Requirement(text)) for text in texts]
    return found


def test_every_dependency_is_locked_at_a_version_it_allows() -> None:
    pins = locked()
    problems = []
    for where, requirement in requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement} ({where}) is not in constraints.txt")
        elif not requirement.specifier.contains(Version(pins[name]), prereleases=True):
            problems.append(f"{requirement} ({where}) does not allow the locked {name}=={pins[name]}")
    assert not problems, "run `make lock` after changing pyproject.toml:\n" + "\n".join(problems)


def test_torch_is_locked_without_a_local_label() -> None:
    version = locked()["torch"]
    assert Version(version).local is None, f"torch=={version}: a local label (+cpu) would refuse the CUDA build"


@pytest.mark.parametrize("path, needle", [
    ("Makefile", "-c $(LOCK) -e '.[dev]'"),
    ("docker/install-deps.sh", '-c "$CONSTRAINTS"'),
    ("Dockerfile", "constraints.txt /tmp/build/"),
    (".dockerignore", "!constraints.txt"),
])
def test_setup_and_the_image_install_from_the_lock(path: str, needle: str) -> None:
    assert needle in (REPO / path).read_text(), f"{path} no longer installs from constraints.txt"
