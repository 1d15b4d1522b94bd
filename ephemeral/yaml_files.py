"""YAML as the project's files (cluster specs, gates, prices, drift thresholds) are read.

PyYAML keeps the last of two equal keys in a mapping without a word, so a spec with two
``replicas:`` or two ``lifetime:`` blocks silently meant only the second. A repeated key is an
error here, with its line, like any other malformed YAML. Merge keys (``<<: *defaults``) still
work: a mapping's own key overriding a merged one is what merging is for.
"""

from __future__ import annotations

from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: PyYAML refuses it itself
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"the key {key!r} appears twice; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, refusing a key repeated in one mapping."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
