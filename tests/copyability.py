"""The copyability rule, executable: what a reader may copy out of this project needs only the SDK.

- A *copyable module* of ``common/`` imports nothing but the standard library, the Azure SDK and
  other copyable modules (never the configuration, the command line or the local stack).
- A *copyable function* of a sample (every function it defines except ``main`` and its
  ``run_...`` story) takes plain values and SDK objects, never the project's settings objects,
  and uses no name of its sample module but SDK objects, the standard library, the packages
  ``requirements.txt`` names (what a reader installs anyway, e.g. paramiko) and helpers of
  copyable modules (no module constant, no class or other function of the sample).
- ``copy_function`` does what a reader does: it takes the function's source alone and defines it
  in a namespace holding only the library names the sample imports and the helpers it names.
"""

from __future__ import annotations

import __future__
import ast
import builtins
import functools
import importlib
import importlib.metadata
import inspect
import re
import sys
import textwrap
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Callable, Iterator

from common import REPOSITORY_ROOT

COPYABLE_MODULES = (
    "common.helpers", "common.storage", "common.cleanup", "common.redaction", "resources.key_vault_key_wrapper",
)
"""The helper modules meant to be copied (README: "The helpers in common/"; sample 3's key wrapper)."""

SAMPLE_MODULES = (
    "sample1_helloworld", "sample2_pools_and_resourcefiles", "sample3_encrypted_resourcefiles", "sample4_docker_swarm",
)
"""Every sample whose functions must be copyable; a new sample adds itself here."""

STORY_FUNCTIONS = ("main",)
STORY_PREFIX = "run_"


def _top_level_name(module_name: str) -> str:
    return module_name.split(".")[0]


def _is_allowed_import(module_name: str) -> bool:
    return (
        _top_level_name(module_name) in sys.stdlib_module_names
        or _top_level_name(module_name) == "azure"
        or module_name in COPYABLE_MODULES
        or module_name == "__future__"
    )


def imports_of(source: str) -> Iterator[tuple[int, str]]:
    """(line, module name) of every import in ``source``, at any depth (``from common import X`` gives ``common.X``)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module == "common":  # "from common import helpers" imports the module common.helpers
                for alias in node.names:
                    yield node.lineno, f"common.{alias.name}"
            else:
                yield node.lineno, module


def forbidden_imports(module_name: str, source: str) -> list[str]:
    """The imports of a copyable module that break the rule, as ``module:line imports name``."""
    return [f"{module_name}:{line} imports {name}" for line, name in imports_of(source) if not _is_allowed_import(name)]


def module_source(module_name: str) -> str:
    return (REPOSITORY_ROOT / Path(*module_name.split("."))).with_suffix(".py").read_text(encoding="utf-8")


def copyable_functions(module: ModuleType) -> list[FunctionType]:
    """The functions a sample defines that a reader may copy: all but ``main`` and ``run_...``."""
    return [
        value for name, value in vars(module).items()
        if inspect.isfunction(value) and value.__module__ == module.__name__
        and name not in STORY_FUNCTIONS and not name.startswith(STORY_PREFIX)
    ]


def _function_node(function: FunctionType) -> ast.FunctionDef:
    node = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    assert isinstance(node, ast.FunctionDef)
    return node


def free_names(function: FunctionType) -> set[str]:
    """Names the function reads that it does not bind itself (parameters, locals): its dependencies."""
    node = _function_node(function)
    bound = {argument.arg for argument in ast.walk(node.args) if isinstance(argument, ast.arg)}
    read = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            (bound.add if isinstance(child.ctx, ast.Store) else read.add)(child.id)
        elif isinstance(child, (ast.FunctionDef, ast.Lambda)) and child is not node:
            bound.update(argument.arg for argument in ast.walk(child.args) if isinstance(argument, ast.arg))
        elif isinstance(child, ast.comprehension):
            bound.update(name.id for name in ast.walk(child.target) if isinstance(name, ast.Name))
        elif isinstance(child, ast.ExceptHandler) and child.name:  # except ... as name
            bound.add(child.name)
    annotations = {name.id for argument in ast.walk(node) if isinstance(argument, ast.arg) and argument.annotation
                   for name in ast.walk(argument.annotation) if isinstance(name, ast.Name)}
    if node.returns is not None:
        annotations.update(name.id for name in ast.walk(node.returns) if isinstance(name, ast.Name))
    return (read | annotations) - bound - set(dir(builtins))


def _origin(value: object) -> str:
    if inspect.ismodule(value):
        return value.__name__
    return getattr(value, "__module__", "") or ""


def helpers_named(function: FunctionType) -> dict[str, Callable]:
    """The helpers of copyable modules the function calls by name, imported from those modules."""
    module_globals = function.__globals__
    helpers = {}
    for name in free_names(function):
        value = module_globals.get(name)
        if value is not None and _origin(value) in COPYABLE_MODULES:
            helpers[name] = getattr(importlib.import_module(_origin(value)), name)
    return helpers


def _is_importable_definition(value: object) -> bool:
    """A module, class or function (what an import statement gives), as opposed to a constant."""
    return inspect.ismodule(value) or inspect.isclass(value) or inspect.isroutine(value)


def _distribution_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


@functools.lru_cache(maxsize=None)
def required_packages() -> frozenset[str]:
    """The top-level packages of the distributions ``requirements.txt`` names (``azure``, ``paramiko``, ...)."""
    lines = (REPOSITORY_ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    required = {_distribution_name(line) for line in (line.split("#", 1)[0] for line in lines) if line.strip()}
    return frozenset(
        package for package, distributions in importlib.metadata.packages_distributions().items()
        if any(_distribution_name(distribution) in required for distribution in distributions)
    )


def _is_sdk_or_standard(value: object) -> bool:
    """A module, class or function of the standard library, the Azure SDK or a package of requirements.txt."""
    origin = _origin(value)
    top = _top_level_name(origin)
    if origin == "typing":  # Optional, Sequence...: annotations only
        return True
    return _is_importable_definition(value) and (
        top == "azure" or top in sys.stdlib_module_names or top in required_packages()
    )


def rule_breaches(function: FunctionType) -> list[str]:
    """Why a sample function is not copyable (empty when it is)."""
    breaches = []
    module_globals = function.__globals__
    for name in sorted(free_names(function)):
        if name not in module_globals:
            breaches.append(f"{function.__name__} uses {name}, which its module does not define")
            continue
        value = module_globals[name]
        if _is_sdk_or_standard(value) or (_origin(value) in COPYABLE_MODULES and _is_importable_definition(value)):
            continue
        if _origin(value).startswith("common"):
            what = f"from {_origin(value)}, which is not a copyable module"
        elif _origin(value) == function.__module__ and inspect.isclass(value):
            what = "a class of the sample"
        elif inspect.isfunction(value):
            what = "another function of the sample"
        elif _is_importable_definition(value) and _origin(value):
            what = f"from {_origin(value)}, which requirements.txt does not name"
        else:
            what = f"a constant of the sample module, a {type(value).__name__}"
        breaches.append(f"{function.__name__} uses {name} ({what})")
    return breaches


def sdk_names_of(module: ModuleType) -> dict[str, object]:
    """The names a sample module imported from the standard library, the Azure SDK and requirements.txt (no constants)."""
    return {name: value for name, value in vars(module).items() if not name.startswith("__") and _is_sdk_or_standard(value)}


def copy_function(module: ModuleType, name: str) -> FunctionType:
    """Define ``module.name`` again from its source alone, with only the SDK and the helpers it names at hand."""
    function = getattr(module, name)
    namespace: dict[str, object] = {**sdk_names_of(module), **helpers_named(function), "__name__": f"copied_{name}"}
    source = textwrap.dedent(inspect.getsource(function))
    code = compile(source, f"<copy of {module.__name__}.{name}>", "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, namespace)  # noqa: S102 - the point is to run exactly the text a reader copies
    copied = namespace[name]
    assert isinstance(copied, FunctionType)
    return copied
