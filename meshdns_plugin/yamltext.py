# -*- test-case-name: tests.test_config -*-
"""
Reading YAML files for people: every failure becomes one line that says where.

PyYAML's errors span several lines, and its reader errors (control
characters, bad encodings) carry a character position instead of a line; the
config and the entry files both report through L{describe}.
"""

from __future__ import annotations

import yaml


def describe(error: yaml.YAMLError, text: str) -> str:
    """
    C{"line N: invalid YAML: what"} for an error met while parsing C{text}.
    """
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        line = mark.line + 1
    elif isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
    else:
        line = None
    if isinstance(error, yaml.reader.ReaderError):
        problem = f"{error.reason} ({error.character!r})"
    else:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {line}: " if line is not None else ""
    return f"{where}invalid YAML: {problem}"


def read_text(path: str) -> str:
    """
    The text of a UTF-8 file.

    @raise OSError: if it cannot be read.
    @raise ValueError: one line, if it is not UTF-8.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 (byte {e.start} is {data[e.start]:#04x})") from None
