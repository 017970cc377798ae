"""blobfuseOptions: the mount's command line options, read as blobfuse2 reads them.

Accepted (anything else fails the mount, naming the option, as blobfuse2 refuses an unknown flag):
- FUSE options `-o name[=value][,...]`: allow_other, allow_root, ro, attr_timeout, entry_timeout,
  negative_timeout, default_permissions, kernel_cache, direct_io (the last three are recorded only)
- blobfuse2 flags `--name[=value]`: allow-other, read-only, attr-timeout, entry-timeout,
  negative-timeout, file-cache-timeout, virtual-directory, log-level, use-attr-cache;
  blobfuse v1's file-cache-timeout-in-seconds
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

# blobfuse2's defaults: libfuse component timeouts and file cache timeout, in seconds.
DEFAULT_KERNEL_TIMEOUT = 120
DEFAULT_FILE_CACHE_TIMEOUT = 120
# Permission bits blobfuse2 presents on an account without hierarchical namespace.
FILE_MODE = 0o755
DIRECTORY_MODE = 0o775
ALLOW_OTHER_MODE = 0o777

_NUMERIC_FUSE_OPTIONS = {"attr_timeout": "attr_timeout", "entry_timeout": "entry_timeout",
                         "negative_timeout": "negative_timeout"}
_RECORDED_FUSE_OPTIONS = {"default_permissions", "kernel_cache", "direct_io"}
_NUMERIC_FLAGS = {"attr-timeout": "attr_timeout", "entry-timeout": "entry_timeout",
                  "negative-timeout": "negative_timeout", "file-cache-timeout": "file_cache_timeout",
                  "file-cache-timeout-in-seconds": "file_cache_timeout"}
_BOOLEAN_FLAGS = {"allow-other": "allow_other", "read-only": "read_only"}
_RECORDED_FLAGS = {"virtual-directory", "log-level", "use-attr-cache"}


class OptionError(ValueError):
    """A blobfuseOptions entry blobfuse2 would refuse."""


@dataclass
class MountOptions:
    allow_other: bool = False
    allow_root: bool = False
    read_only: bool = False
    attr_timeout: int = DEFAULT_KERNEL_TIMEOUT
    entry_timeout: int = DEFAULT_KERNEL_TIMEOUT
    negative_timeout: int = DEFAULT_KERNEL_TIMEOUT
    file_cache_timeout: int = DEFAULT_FILE_CACHE_TIMEOUT
    recorded: list[str] = field(default_factory=list)

    @property
    def file_mode(self) -> int:
        return ALLOW_OTHER_MODE if self.allow_other else FILE_MODE

    @property
    def directory_mode(self) -> int:
        return ALLOW_OTHER_MODE if self.allow_other else DIRECTORY_MODE

    def fuse_arguments(self) -> dict:
        """Keyword options for mfusepy.FUSE (libfuse's -o options)."""
        arguments = {"attr_timeout": self.attr_timeout, "entry_timeout": self.entry_timeout,
                     "negative_timeout": self.negative_timeout, "fsname": "blobfuse2", "subtype": "blobfuse2"}
        if self.allow_other:
            arguments["allow_other"] = True
        elif self.allow_root:
            arguments["allow_root"] = True
        if self.read_only:
            arguments["ro"] = True
        return arguments


def parse_options(text: str) -> MountOptions:
    """MountOptions from a blobfuseOptions string; OptionError names what blobfuse2 would refuse."""
    options = MountOptions()
    try:
        words = shlex.split(text or "")
    except ValueError as exc:
        raise OptionError(f"cannot split the options: {exc}") from None
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-o" or (word.startswith("-o") and not word.startswith("--")):
            value = word[2:]
            if not value:
                index += 1
                if index >= len(words):
                    raise OptionError("-o needs a value")
                value = words[index]
            for item in filter(None, value.split(",")):
                _fuse_option(options, item)
        elif word.startswith("--"):
            name, has_value, value = word[2:].partition("=")
            if not has_value and name in _NUMERIC_FLAGS and index + 1 < len(words) \
                    and not words[index + 1].startswith("-"):
                index += 1
                value, has_value = words[index], True
            _flag(options, name, value if has_value else None)
        else:
            raise OptionError(f"unexpected argument {word!r}")
        index += 1
    return options


def _fuse_option(options: MountOptions, item: str) -> None:
    name, has_value, value = item.partition("=")
    if name in _NUMERIC_FUSE_OPTIONS:
        setattr(options, _NUMERIC_FUSE_OPTIONS[name], _seconds(f"-o {name}", value if has_value else ""))
    elif name == "allow_other" and not has_value:
        options.allow_other = True
    elif name == "allow_root" and not has_value:
        options.allow_root = True
    elif name == "ro" and not has_value:
        options.read_only = True
    elif name in _RECORDED_FUSE_OPTIONS:
        options.recorded.append(f"-o {item}")
    else:
        raise OptionError(f"unknown FUSE option -o {item}")


def _flag(options: MountOptions, name: str, value: "str | None") -> None:
    if name in _NUMERIC_FLAGS:
        setattr(options, _NUMERIC_FLAGS[name], _seconds(f"--{name}", value or ""))
    elif name in _BOOLEAN_FLAGS:
        setattr(options, _BOOLEAN_FLAGS[name], _boolean(f"--{name}", value))
    elif name in _RECORDED_FLAGS:
        options.recorded.append(f"--{name}" + (f"={value}" if value is not None else ""))
    else:
        raise OptionError(f"unknown flag: --{name}")


def _seconds(name: str, value: str) -> int:
    if not value.isdigit() or int(value) > 2 ** 31:
        raise OptionError(f"{name} needs a number of seconds, got {value!r}")
    return int(value)


def _boolean(name: str, value: "str | None") -> bool:
    if value is None or value.lower() == "true":
        return True
    if value.lower() == "false":
        return False
    raise OptionError(f"{name} takes true or false, got {value!r}")
