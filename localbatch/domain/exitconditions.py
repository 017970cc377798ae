"""Exit conditions: how a task's end (its exit code, a pre-processing error, a file upload error)
decides the job action and the dependency action, as the Batch service documents them.

Defaults: exit code 0 means jobAction `none` and dependencyAction `satisfy`; any other exit
condition means `terminate` and `block`. A job action is taken only when the job's
onTaskFailure is `performexitoptionsjobaction`; on other jobs a task may not ask for one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import invalid_property

PERFORM_EXIT_OPTIONS = "performexitoptionsjobaction"
OPTION_GROUPS = ("preProcessingError", "fileUploadError", "default")


@dataclass(frozen=True)
class ExitOptions:
    job_action: str        # none | disable | terminate
    dependency_action: str  # satisfy | block


def check_exit_conditions(conditions: Optional[dict], on_task_failure: str) -> None:
    """400 InvalidPropertyValue for a range that runs backwards, or a job action the job cannot take."""
    if not conditions:
        return
    named: list[tuple[str, Optional[dict]]] = []
    for index, mapping in enumerate(conditions.get("exitCodes") or []):
        named.append((f"exitConditions.exitCodes[{index}].exitOptions", mapping.get("exitOptions")))
    for index, mapping in enumerate(conditions.get("exitCodeRanges") or []):
        if mapping["start"] > mapping["end"]:
            raise invalid_property(f"exitConditions.exitCodeRanges[{index}]", f"{mapping['start']}-{mapping['end']}",
                                   "The start of a range may not be greater than its end.")
        named.append((f"exitConditions.exitCodeRanges[{index}].exitOptions", mapping.get("exitOptions")))
    named += [(f"exitConditions.{group}", conditions.get(group)) for group in OPTION_GROUPS]
    if on_task_failure.lower() == PERFORM_EXIT_OPTIONS:
        return
    for name, options in named:
        action = (options or {}).get("jobAction")
        if action and action.lower() != "none":
            raise invalid_property(f"{name}.jobAction", action,
                                   "A job action requires the job's onTaskFailure to be performExitOptionsJobAction.")


def resolve(conditions: Optional[dict], exit_code: Optional[int], failure_code: Optional[str]) -> ExitOptions:
    """The exit options that apply to a task that ended with this exit code and failure code."""
    conditions = conditions or {}
    matched = _by_exit_code(conditions, exit_code) if exit_code is not None else None
    if failure_code is not None and failure_code.startswith("FileUpload"):
        given = matched if matched is not None else conditions.get("fileUploadError") or conditions.get("default")
        return _with_defaults(given, succeeded=False)
    if exit_code is None:
        # It never ran (or the emulator ended it before it could): a pre-processing error, or no error at all.
        if failure_code is None:
            return _with_defaults(None, succeeded=True)
        return _with_defaults(conditions.get("preProcessingError") or conditions.get("default"), succeeded=False)
    if matched is None and exit_code != 0:
        matched = conditions.get("default")
    return _with_defaults(matched, succeeded=exit_code == 0 and failure_code is None)


def _by_exit_code(conditions: dict, exit_code: int) -> Optional[dict]:
    for mapping in conditions.get("exitCodes") or []:
        if mapping["code"] == exit_code:
            return mapping.get("exitOptions") or {}
    for mapping in conditions.get("exitCodeRanges") or []:
        if mapping["start"] <= exit_code <= mapping["end"]:
            return mapping.get("exitOptions") or {}
    return None


def _with_defaults(given: Optional[dict], succeeded: bool) -> ExitOptions:
    given = given or {}
    return ExitOptions((given.get("jobAction") or ("none" if succeeded else "terminate")).lower(),
                       (given.get("dependencyAction") or ("satisfy" if succeeded else "block")).lower())
