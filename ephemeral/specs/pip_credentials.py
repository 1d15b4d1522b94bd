"""The one rule for credentials in pip entries, shared by the spec's ``runtimeEnv.pip``, a job's
own ``runtime_env`` pip/uv (operator, CLI) and the ad-hoc trigger form.

A pip entry travels far: the spec (and ``specs show``), the cluster handle in XCom and state,
the RayCluster annotation, Ray's job info. So an entry whose URL holds user-info
(``https://user:token@host/...``, ``https://token@host/...``) is refused, and the message shows
the entry with the user-info masked: the refusal must not spread the secret either.
"""

from __future__ import annotations

import re

# scheme://userinfo@host: the user-info is everything up to the last '@' before the path.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/?#\s]*)@")

FIX = ("never put credentials in a requirement: install private packages from a package index "
       "configured on the image (pip.conf) or from the environment (PIP_EXTRA_INDEX_URL set from "
       "a secret, e.g. a runtimeEnv.env entry with secretKeyRef), and name the package plainly")


def masked(entry: str) -> str:
    """``entry`` with any URL user-info replaced by ``***``."""
    return _USERINFO.sub(r"\g<scheme>***@", entry)


def _secret(match: re.Match[str]) -> bool:
    """An ssh URL's bare user name (``git+ssh://git@github.com``) is no secret, its key is
    elsewhere; any password, and any user-info of another scheme (a token as the user name of
    ``https://ghp_...@github.com``), is."""
    return ":" in match["info"] or "ssh" not in match["scheme"].lower()


def credentials_problem(entry: str) -> str | None:
    """Why ``entry`` is refused for the credentials in its URL, or None when it has none."""
    if not any(_secret(m) for m in _USERINFO.finditer(entry)):
        return None
    return (f"{masked(entry)!r} has credentials in its URL (user:password@ or token@), which "
            f"would be copied into XCom, state, the cluster's annotations and Ray's job info; "
            f"{FIX}")
