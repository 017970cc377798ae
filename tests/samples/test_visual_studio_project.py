"""BatchSamples.pyproj and BatchSamples.sln: every sample, common module, resource and test is in the project."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree

from common import REPOSITORY_ROOT

MSBUILD = "{http://schemas.microsoft.com/developer/msbuild/2003}"
PROJECT = REPOSITORY_ROOT / "BatchSamples.pyproj"
SOLUTION = REPOSITORY_ROOT / "BatchSamples.sln"


def project_items(kind: str) -> set[str]:
    root = ElementTree.parse(PROJECT).getroot()
    return {item.get("Include", "").replace("\\", "/") for item in root.iter(f"{MSBUILD}{kind}")}


def project_property(name: str) -> str:
    element = ElementTree.parse(PROJECT).getroot().find(f"{MSBUILD}PropertyGroup/{MSBUILD}{name}")
    assert element is not None and element.text, f"{PROJECT.name} has no {name}"
    return element.text


def files_that_belong_in_the_project() -> set[str]:
    found = set(REPOSITORY_ROOT.glob("sample*_*.py"))
    found |= set((REPOSITORY_ROOT / "common").glob("*.py"))
    found |= {path for path in (REPOSITORY_ROOT / "resources").rglob("*") if path.is_file()}
    found |= set((REPOSITORY_ROOT / "sample_configs").glob("*.cfg"))
    found |= {path for path in (REPOSITORY_ROOT / "tests").rglob("*.py") if "emulator" not in path.parts}
    return {path.relative_to(REPOSITORY_ROOT).as_posix() for path in found if "__pycache__" not in path.parts}


def test_the_project_lists_every_sample_module_resource_and_test() -> None:
    listed = project_items("Compile") | project_items("Content")

    missing = files_that_belong_in_the_project() - listed
    assert not missing, f"add these to {PROJECT.name}: {sorted(missing)}"


def test_everything_the_project_lists_exists() -> None:
    listed = {item for item in project_items("Compile") | project_items("Content") if "*" not in item}

    absent = {item for item in listed if not (REPOSITORY_ROOT / item).is_file()}
    assert not absent, f"{PROJECT.name} lists files that do not exist: {sorted(absent)}"


def test_samples_start_from_the_project_folder_with_it_on_the_search_path() -> None:
    assert project_property("SearchPath") == "."
    assert project_property("ProjectHome") == "."
    assert project_property("WorkingDirectory") == "."
    assert (REPOSITORY_ROOT / project_property("StartupFile")).is_file()


def test_the_solution_opens_the_project() -> None:
    solution = SOLUTION.read_text(encoding="utf-8")
    match = re.search(r'Project\("\{[0-9A-F-]+\}"\) = "BatchSamples", "BatchSamples\.pyproj", "\{([0-9A-F-]+)\}"', solution)

    assert match, f"{SOLUTION.name} does not reference BatchSamples.pyproj"
    assert match.group(1).lower() == project_property("ProjectGuid").strip("{}").lower()
