"""YAML that people write for termlm (labels, glossaries, templates, prompt variants).

``load`` is ``yaml.safe_load`` (or, with ``text_only``, every scalar read as text:
``no: non`` stays text) that also refuses what such a file never needs and that
would otherwise go unnoticed or blow up:

* **a key given twice** in one mapping (PyYAML keeps the last silently): an
  error that names the key and its line;
* **aliases** (``*name``): an "alias bomb" of nested aliases expands to gigabytes
  from a few lines.

Errors are ``yaml.YAMLError``s; ``reason`` turns one into a line for the user.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError


class _Refused(ComposerError):
    """What these files may not have (an alias, a key given twice)."""


class _Strict:
    """Mixed into a PyYAML loader: no aliases, no repeated keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        loader: Any = self
        if loader.check_event(yaml.AliasEvent):
            event = loader.peek_event()
            raise _Refused(None, None, "aliases (*name) are not allowed here",
                           event.start_mark)
        return super().compose_node(parent, index)  # type: ignore[misc]

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        loader: Any = self
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: the constructor says so
                break
            if repeated:
                raise _Refused(None, None, f"the key {key!r} is given twice",
                               key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)  # type: ignore[misc]


class _SafeLoader(_Strict, yaml.SafeLoader):
    pass


class _TextLoader(_Strict, yaml.BaseLoader):
    pass


def load(text: str, *, text_only: bool = False) -> Any:
    return yaml.load(text, Loader=_TextLoader if text_only else _SafeLoader)


def reason(exc: yaml.YAMLError) -> str:
    """``exc`` as a short phrase with its line: "the key 'pos' is given twice (line 3)"."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem:
        return "not valid YAML"
    where = f" (line {mark.line + 1})" if mark is not None else ""
    if isinstance(exc, _Refused):
        return f"{problem}{where}"
    return f"not valid YAML: {problem}{where}"
