"""Dot-list overrides of a config's keys from the command line: `training.epochs=3`, `methods.1.rank=[2, 8]`.

KEY is a dotted path into the YAML data (an integer segment indexes a list); VALUE is read as YAML, so
`3` is an int, `[1, 4]` a list, `null` None and `'3'` the text "3". A key missing from a mapping is
created (the config's validation then names it if the schema has no such field); anything else that
cannot be applied fails with a `ConfigError` naming the key.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import yaml

from ftcompare.schema import ConfigError


def apply_overrides(data: dict, overrides: Sequence[str], source: str) -> dict:
    """A new dict: `data` with each `KEY=VALUE` of `overrides` set, in order (a later one wins). `data` is
    left as it was. `source` names where the overrides came from in an error (e.g. "cfg.yaml (command line)").

    A missing or null mapping key on the way is created as a mapping, so `evaluation.forgetting.n_chunks=8`
    sets one key of a section the file left out. Indexing past a list's end, into a scalar, or a list with
    something other than an index is refused, as is an item with no `=`, an empty key or an empty value."""
    result = copy.deepcopy(data)
    for item in overrides:
        key, value = _parse(item, source)
        _set(result, key, value, source)
    return result


def _parse(item: str, source: str) -> tuple[str, object]:
    key, equals, text = item.partition("=")
    key = key.strip()
    if not equals:
        raise ConfigError(source, f"not KEY=VALUE: {item!r} (e.g. training.epochs=3)", field=key or None)
    if not key:
        raise ConfigError(source, f"no key before '=' in {item!r} (e.g. training.epochs=3)")
    if any(not segment.strip() for segment in key.split(".")):
        raise ConfigError(source, "an empty segment in the dotted key", field=key)
    if not text.strip():
        raise ConfigError(source, "no value after '=' (write KEY=null for none, KEY=\"\" for empty text)", field=key)
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(source, f"the value is not valid YAML: {' '.join(str(error).split())}", field=key) from None


def _set(root: dict, key: str, value: object, source: str) -> None:
    segments = [segment.strip() for segment in key.split(".")]
    node: object = root
    for depth, segment in enumerate(segments):
        last = depth == len(segments) - 1
        path = ".".join(segments[:depth]) or "the config"
        if isinstance(node, dict):
            if last:
                node[segment] = value
            else:
                if node.get(segment) is None:  # missing, or null: a mapping holding this key
                    node[segment] = {}
                node = node[segment]
        elif isinstance(node, list):
            if not segment.isdigit():
                raise ConfigError(
                    source, f"{path} is a list: index it with a number from 0 to {len(node) - 1}, not {segment!r}", field=key
                )
            index = int(segment)
            if index >= len(node):
                raise ConfigError(
                    source,
                    f"index {index} is past the end of {path} ({len(node)} item{'s' if len(node) != 1 else ''})",
                    field=key,
                )
            if last:
                node[index] = value
            else:
                if node[index] is None:
                    node[index] = {}
                node = node[index]
        else:
            raise ConfigError(source, f"{path} is {node!r}, not a mapping or a list: it has no {segment!r}", field=key)
