"""The copyability rule (tests/copyability.py) holds for common/'s copyable modules and every sample's functions."""

from __future__ import annotations

import importlib

import paramiko
import pytest

from common.config import SampleSettings
from tests.copyability import (
    COPYABLE_MODULES,
    SAMPLE_MODULES,
    copyable_functions,
    forbidden_imports,
    module_source,
    required_packages,
    rule_breaches,
)


@pytest.mark.parametrize("module_name", COPYABLE_MODULES)
def test_a_copyable_module_imports_only_the_sdk_the_standard_library_and_copyable_modules(module_name: str) -> None:
    assert forbidden_imports(module_name, module_source(module_name)) == []


@pytest.mark.parametrize("module_name", SAMPLE_MODULES)
def test_every_function_a_sample_defines_is_copyable(module_name: str) -> None:
    module = importlib.import_module(module_name)
    functions = copyable_functions(module)

    assert functions, f"{module_name} defines no function to copy"
    assert [breach for function in functions for breach in rule_breaches(function)] == []


def test_the_import_rule_catches_configuration_and_command_line_code() -> None:
    source = (
        "import json\nfrom azure.batch import models\nfrom common.redaction import redact_secrets\n"
        "from common.config import redact_secrets as again\nfrom common import cli\n"
        "def f():\n    import common.local\n"
    )

    assert forbidden_imports("common.example", source) == [
        "common.example:4 imports common.config",
        "common.example:5 imports common.cli",
        "common.example:7 imports common.local",
    ]


def uses_a_required_package_and_a_development_tool(address: str) -> object:
    """paramiko is in requirements.txt (a reader installs it with the samples); pytest only in requirements-dev.txt."""
    return paramiko.SSHClient(), pytest.approx(1), address


def test_the_function_rule_allows_the_packages_of_requirements_txt_and_no_other() -> None:
    assert "paramiko" in required_packages() and "pytest" not in required_packages()
    assert rule_breaches(uses_a_required_package_and_a_development_tool) == [
        "uses_a_required_package_and_a_development_tool uses pytest (from pytest, which requirements.txt does not name)",
    ]


class ClassOfThisModule(Exception):
    """An exception class a copied function would need as well."""


def raises_a_class_of_this_module() -> None:
    raise ClassOfThisModule("a reader copying this function would need the class too")


def test_the_function_rule_catches_a_class_of_the_sample() -> None:
    assert rule_breaches(raises_a_class_of_this_module) == [
        "raises_a_class_of_this_module uses ClassOfThisModule (a class of the sample)",
    ]


MODULE_CONSTANT = object()


def takes_settings(batch_client: object, settings: SampleSettings) -> None:
    """Uses the project's settings object and a module constant: not copyable."""
    print(settings.pool.vm_size, MODULE_CONSTANT, helper_of_this_module())


def helper_of_this_module() -> int:
    return 1


def test_the_function_rule_catches_settings_constants_and_sample_functions() -> None:
    assert rule_breaches(takes_settings) == [
        "takes_settings uses MODULE_CONSTANT (a constant of the sample module, a object)",
        "takes_settings uses SampleSettings (from common.config, which is not a copyable module)",
        "takes_settings uses helper_of_this_module (another function of the sample)",
    ]


def catches_and_names_the_error(text: str) -> str:
    """Binds ``error`` in its except clause: a name of its own, not a dependency."""
    try:
        return str(int(text))
    except ValueError as error:
        return str(error)


def test_a_name_bound_by_an_except_clause_is_not_a_dependency() -> None:
    assert rule_breaches(catches_and_names_the_error) == []
