"""The one rule for secrets in pip entries, shared by the spec's ``runtimeEnv.pip``, a job's
own ``runtime_env`` pip/uv (operator, CLI) and the ad-hoc trigger form: ``pip_entry_problem``.

A pip entry travels far: the spec (and ``specs show``), the cluster handle in XCom and state,
the RayCluster annotation, Ray's job info. So an entry whose URL holds user-info
(``https://user:token@host/...``, ``https://token@host/...``) is refused, and the message shows
the entry with the user-info masked: the refusal must not spread the secret either.

Nor may an entry refer to an environment variable (``pandas===${TOKEN}``,
``pkg @ https://host/${TOKEN}/pkg.whl``): Ray writes the pip list to a requirements file on the
node, and pip expands ``${NAME}`` there from the node's environment (pip's ``req_file``: only
``${NAME}`` with upper-case letters, digits and ``_``; a bare ``$NAME`` is kept as text). That
environment holds the cluster's secrets (``secretKeyRef``/``fromEnv`` values,
``PIP_EXTRA_INDEX_URL``, ``RAY_AUTH_TOKEN`` on Kubernetes), and the expanded requirement lands in
pip's messages, Ray's runtime-env log and the job's info. Every ``${`` (uv expands the same form)
and every ``$NAME`` (in case an installer hands the entry to a shell) is refused: a requirement
never needs a ``$``.

``credentials_problem`` alone (user-info in a URL, or a signed URL's secret parameter such as
``X-Amz-Signature`` or ``sig``) also judges values that are not pip entries
(a spec's env values and Spark conf, ``ephemeral.specs.models.secret_value``), where ``${...}``
can be legitimate; the environment-variable rule is for pip entries only.
"""

from __future__ import annotations

import re

# ${NAME} (what pip and uv expand in a requirements file) and $NAME (what a shell would).
_ENV_REFERENCE = re.compile(r"\$(\{|[A-Za-z_])")

# scheme://userinfo@host: the user-info is everything up to the last '@' before the path; or
# user:password@ whose password has a '/' (an AWS secret key often does: RFC 3986 has no such
# user-info, yet s3://KEY:SEC/RET@bucket is written and read), unless what follows the ':' is a
# port and a path (https://host:8080/p/@scope/pkg is no user-info).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)"
                       r"(?P<info>[^/?#\s]*|[^/?#\s@]*:(?!\d+/)[^?#\s@]*)@")

FIX = ("never put credentials in a requirement: install private packages from a package index "
       "configured on the image (pip.conf) or from the environment (PIP_EXTRA_INDEX_URL set from "
       "a secret, e.g. a runtimeEnv.env entry with secretKeyRef), and name the package plainly")


def masked(entry: str) -> str:
    """``entry`` with any URL user-info replaced by ``***``."""
    return _USERINFO.sub(r"\g<scheme>***@", entry)


# A signed URL's credentials: query (and fragment) parameters named as one. Exact names, and
# names ending in one after a separator (X-Amz-Signature, x-goog-credential, client_secret).
_PARAM = re.compile(r"(?P<name>[?&#;](?P<key>[^=&#;]*)=)(?P<value>[^&#;]*)")
_SECRET_PARAMS = {"sig", "signature", "token", "key", "apikey", "code", "password", "passwd",
                  "pwd", "secret", "credential", "credentials", "auth", "authorization",
                  "awsaccesskeyid"}
_SECRET_SUFFIX = re.compile(r"[-_.](sig|signature|token|key|secret|password|credential)$")


def _param(match: re.Match[str]) -> str:
    key = match["key"].lower()
    secret = key in _SECRET_PARAMS or _SECRET_SUFFIX.search(key) is not None
    return f"{match['name']}***" if secret and match["value"] else match[0]


def masked_uri(uri: str) -> str:
    """``uri`` with its URL user-info and its signed-URL parameter values replaced by
    ``***``."""
    return _PARAM.sub(_param, masked(uri))


# Schemes whose bare user-info names something, never a credential: ssh's user, an Azure
# store's container (abfss://<container>@<account>.dfs.core.windows.net), HDFS's user.
_NAMED_BEFORE_AT = ("ssh", "abfs", "wasb", "hdfs")


def _secret(match: re.Match[str]) -> bool:
    """A bare user-info of those schemes (``git+ssh://git@github.com``, an Azure container) is
    no secret; any password, and any user-info of another scheme (a token as the user name of
    ``https://ghp_...@github.com``), is."""
    scheme = match["scheme"].lower()
    return ":" in match["info"] or not any(s in scheme for s in _NAMED_BEFORE_AT)


# A URL in a text (a whole entrypoint, a template, a conf value): its query and fragment are
# judged by _PARAM only there, so a word such as ``a;token=x`` that is no URL is left alone.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]*")


# What refuses a URL, narrower than what masking hides: the parameters that carry a credential
# in the signed URLs and token-in-query APIs people use (S3's and GCS's V4 signatures, Azure's
# SAS sig, OAuth's access_token, GitLab's private_token, ...). A data URL's partition_key=,
# page_token= or code=200 is no credential; key= is one only with a key's length (a Google API
# key), not ?key=2024.
_CREDENTIAL_PARAMS = {
    "sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
    "x-goog-signature", "x-goog-credential", "token", "access_token", "id_token",
    "refresh_token", "auth_token", "api_key", "apikey", "private_token", "password", "passwd",
    "pwd", "secret", "client_secret", "awsaccesskeyid"}
_KEY_LENGTH = 20


def _credential_param(match: re.Match[str]) -> bool:
    key, value = match["key"].lower(), match["value"]
    if not value:
        return False
    return key in _CREDENTIAL_PARAMS or (key == "key" and len(value) >= _KEY_LENGTH)


def secret_params(text: str) -> list[str]:
    """The credential parameters (``X-Amz-Signature``, ``sig``, ``token``, ...) set with a value
    in the URLs of ``text``, by name."""
    return [m["key"] for url in _URL.finditer(text) for m in _PARAM.finditer(url[0])
            if _credential_param(m)]


def credentials_problem(entry: str, fix: str = FIX) -> str | None:
    """Why ``entry`` is refused for the credentials in its URL (user-info, or a signed URL's
    secret parameter), or None when it has none. The message shows ``entry`` masked
    (``masked_uri``) and ends with ``fix``."""
    if any(_secret(m) for m in _USERINFO.finditer(entry)):
        what = "user:password@ or token@"
    elif params := secret_params(entry):
        what = f"the signed URL's {', '.join(dict.fromkeys(params))} parameter"
    else:
        return None
    return (f"{masked_uri(entry)!r} has credentials in its URL ({what}), which would be copied "
            f"into XCom, state, logs, command lines and Ray's job info; {fix}")


def env_reference_problem(entry: str) -> str | None:
    """Why ``entry`` is refused for referring to an environment variable, or None."""
    if _ENV_REFERENCE.search(entry) is None:
        return None
    return (f"{masked(entry)!r} refers to an environment variable ('${{NAME}}' or '$NAME'): pip "
            f"expands '${{NAME}}' in the requirements file Ray writes on each node, from the "
            f"node's environment, which holds the cluster's secrets (secretKeyRef and fromEnv "
            f"values, PIP_EXTRA_INDEX_URL, RAY_AUTH_TOKEN), and the expanded entry would reach "
            f"pip's output, Ray's logs and the job's info; write the requirement literally, e.g. "
            f"'pandas==2.2.3'")


def pip_entry_problem(entry: str) -> str | None:
    """The shared rule for one pip (or uv) entry: why it is refused for a secret it holds
    (credentials in its URL) or could pull in (an environment-variable reference), or None."""
    return credentials_problem(entry) or env_reference_problem(entry)
