"""The lock files record every environment's exact set, and that set satisfies what the project asks for.

A dependency added to pyproject.toml or a requirements file without `make lock` fails here, before `make setup`
installs a stack that lacks it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "locks"


def pins(*lock_names: str) -> dict[str, Version]:
    """`name==version` lines of the lock files (comments skipped), by canonical name."""
    found: dict[str, Version] = {}
    for lock_name in lock_names:
        for line in (LOCKS / lock_name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, sep, version = line.partition("==")
                assert sep and version.strip(), f"{lock_name}: {line!r} is not an exact name==version pin"
                found[canonicalize_name(name)] = Version(version.strip())
    return found


def requirement_lines(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(text) for text in [*project["dependencies"], *extras["dev"], *extras["gpu"]]]


def unsatisfied(requirements: list[Requirement], pinned: dict[str, Version]) -> list[str]:
    """The requirements (for this platform) that no pin satisfies, each with what the lock holds."""
    missing = []
    for requirement in requirements:
        if requirement.marker and not requirement.marker.evaluate():
            continue
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{requirement} (locked: {version or 'missing'})")
    return missing


def test_the_project_lock_satisfies_pyproject():
    assert unsatisfied(project_requirements(), pins("venv.txt", "venv-gpu.txt")) == []


@pytest.mark.parametrize(
    ("lock_name", "requirements_file"),
    [("venv-nemo.txt", "requirements-nemo.txt"), ("venv-vllm.txt", "requirements-vllm.txt")],
)
def test_each_side_environment_lock_satisfies_its_requirements(lock_name, requirements_file):
    assert unsatisfied(requirement_lines(ROOT / requirements_file), pins(lock_name)) == []


@pytest.mark.parametrize("lock_name", ["venv.txt", "venv-nemo.txt", "venv-vllm.txt"])
def test_every_lock_pins_the_cpu_build_of_torch(lock_name):
    assert pins(lock_name)["torch"] == Version("2.13.0+cpu")


def test_a_missing_dependency_is_reported():
    pinned = pins("venv.txt")
    assert unsatisfied([Requirement("no-such-package>=1")], pinned) == ["no-such-package>=1 (locked: missing)"]
    assert unsatisfied([Requirement("torch>=3")], pinned) == ["torch>=3 (locked: 2.13.0+cpu)"]
