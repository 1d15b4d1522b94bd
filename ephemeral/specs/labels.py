"""Kubernetes' syntax for label keys and values (apimachinery's ``IsQualifiedName`` and
``IsValidLabelValue``): the one rule for every key and value ephemeral puts into a selector or
an object, whether a spec (``nodeSelector``, tolerations), a deployment's settings
(``client_selector``) or ephemeral's own owner labels sent it. A value that passes holds
nothing a selector would read as syntax (no ``,``, ``=``, ``!``, space or newline)."""

from __future__ import annotations

import re

_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
KEY_HELP = ("an optional DNS subdomain prefix and '/', then at most 63 letters, digits, '-', "
            "'_' or '.', starting and ending with a letter or digit (e.g. nvidia.com/gpu)")
VALUE_HELP = ("at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter "
              "or digit (or empty)")


def is_label_value(value: object) -> bool:
    """Whether ``value`` is a Kubernetes label value (empty too)."""
    return isinstance(value, str) and len(value) <= 63 and (
        value == "" or bool(_NAME.fullmatch(value)))


def is_label_key(key: object) -> bool:
    """Whether ``key`` is a Kubernetes label key (a qualified name): ``[prefix/]name``, the
    prefix a DNS subdomain of at most 253 characters, the name a non-empty label value."""
    if not isinstance(key, str):
        return False
    prefix, slash, name = key.rpartition("/")
    return (0 < len(name) <= 63 and bool(_NAME.fullmatch(name))
            and (not slash or (0 < len(prefix) <= 253
                               and bool(_DNS1123_SUBDOMAIN.fullmatch(prefix)))))


def label_problems(labels: object) -> list[str]:
    """The ``key=value`` pairs of ``labels`` that are not Kubernetes labels, or the whole
    value when it is no mapping of strings."""
    if not isinstance(labels, dict):
        return [repr(labels)]
    return [f"{k}={v}" for k, v in labels.items() if not (is_label_key(k) and is_label_value(v))]
