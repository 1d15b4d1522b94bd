"""A tiny JSON GET for readiness probes of every backend (the Ray dashboard, the Spark master
UI) and for the run report's reads of the engines: None when the endpoint does not answer
(yet), so a probe reads "not ready", never fails.

No request that carries credentials follows a redirect. A cluster's head answers through the
API server's service proxy, which relays a redirect to another host as it is; following it would
send the Kubernetes bearer token and the cluster's Ray token to that host. A redirect is an
answer of no use here: "does not answer". This module's GET, the Ray Jobs clients
(``ephemeral.jobs.ray_jobs``) and the Kubernetes client (``kubernetes.client``) all refuse them.

Nor does the worker's environment steer a call to a cluster: a corporate HTTP_PROXY/ALL_PROXY
whose NO_PROXY misses 127.x would receive every local cluster's token (and never relay it), so
both HTTP stacks ignore environment proxies (``cluster_session``, ``get_json``; only a proxy
``Access.proxy`` names is used) and gRPC channels to a cluster take ``GRPC_NO_PROXY``; and both
trust the same CAs (``ca_trust``).

Every other client that sends a token or a password (the reaper's and the dev stack's Airflow
API clients) opens its requests with ``open_no_redirect``, and refuses a URL that would carry
them in clear text to another host (``plain_http_problem``).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)
_said: set[str] = set()  # URLs whose refused redirect was logged (probes poll)
# gRPC's own reading of http_proxy/grpc_proxy, off for a channel to a cluster (see above).
GRPC_NO_PROXY: tuple[tuple[str, int], ...] = (("grpc.enable_http_proxy", 0),)


def ca_trust(verify: bool | str) -> bool | str:
    """The CAs a call to a cluster trusts, one answer for both HTTP stacks (urllib here,
    ``requests`` in the Ray Jobs client), which otherwise read different variables
    (SSL_CERT_FILE; REQUESTS_CA_BUNDLE) and stores (OpenSSL's; certifi's). ``verify`` as
    ``Access.verify`` gives it: a CA file or folder (an API server's private CA) or False is
    explicit; True is REQUESTS_CA_BUNDLE, else OpenSSL's default file or folder (where
    SSL_CERT_FILE and SSL_CERT_DIR point when set), else True (the library's own default)."""
    if verify is not True:
        return verify
    if bundle := os.environ.get("REQUESTS_CA_BUNDLE"):
        return bundle
    paths = ssl.get_default_verify_paths()
    return paths.cafile or paths.capath or True


def tls_context(verify: bool | str) -> ssl.SSLContext:
    """``Access.verify`` as an SSL context, trusting what ``ca_trust`` says: a CA bundle file
    or a folder of CA certificates, False for no check, True for the default trust."""
    verify = ca_trust(verify)
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return ssl.create_default_context()


def _proxies(proxy: str | None) -> dict[str, str]:
    return {"http": proxy, "https": proxy} if proxy else {}


def cluster_session(verify: bool | str, proxy: str | None = None) -> requests.Session:
    """A ``requests`` session for calls to a cluster: no proxy, ``.netrc`` credentials or CA
    bundle from the environment (``trust_env``); ``ca_trust``'s CAs, ``proxy`` if any
    (``Access.proxy``). ``requests.request`` makes a session per call too: one per call is
    no cost, and is safe on any thread."""
    import requests

    session = requests.Session()
    session.trust_env = False
    session.verify = ca_trust(verify)
    session.proxies = _proxies(proxy)
    return session


def redirect_refused(url: str, location: str | None) -> str:
    """What a refused redirect means, for a log line or an error."""
    return (f"{url} answers with a redirect to {location or '(no Location)'}, which ephemeral "
            "does not follow (it would carry the cluster's credentials): configure the URL it "
            "redirects to")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is the answer (urllib raises it as an HTTPError), never followed."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def in_clear_off_host(url: str) -> bool:
    """Whether a request to ``url`` would travel unencrypted off this host: not https, and not
    plain http to a loopback address (a port-forward)."""
    from urllib.parse import urlsplit

    split = urlsplit(url)
    host = split.hostname or ""
    return not (split.scheme == "https" or (split.scheme == "http" and (
        host in _LOOPBACK or host.startswith("127."))))


def http_address(url: str) -> bool:
    """Whether ``url`` is an http or https URL with a host (and a port, if any, that is a
    number): what a URL setting that people or a client follow must be."""
    from urllib.parse import urlsplit

    try:
        split = urlsplit(url)
        _ = split.port  # raises for a port that is no number
        host = split.hostname
    except ValueError:  # a bad port, an unclosed [IPv6
        return False
    return split.scheme in ("http", "https") and bool(host)


def url_setting_problem(setting: str, url: str, fix: str) -> str | None:
    """Why the URL ``url`` of ``setting`` is refused for the credentials in it (user-info or a
    signed URL's secret parameter, ``credentials_problem``), or None; the URL is masked and
    the message ends with ``fix``. A URL setting is shown in logs and errors: credentials go
    in their own settings."""
    from ephemeral.specs.pip_credentials import credentials_problem

    problem = credentials_problem(url, fix)
    return None if problem is None else f"{setting} {problem}"


def plain_http_problem(url: str, setting: str, carries: str) -> str | None:
    """Why ``url`` (the value of ``setting``) may not carry ``carries`` (a token, a password):
    ``in_clear_off_host``. None when it is https or stays here. The URL is shown masked
    (``masked_uri``)."""
    from ephemeral.specs.pip_credentials import masked_uri

    if not in_clear_off_host(url):
        return None
    return (f"{setting} {masked_uri(url)!r}: requests to it carry {carries}, so it must be an "
            "https URL (plain http only to this host, e.g. a port-forward)")


def open_no_redirect(request: urllib.request.Request, *, timeout: float,
                     verify: bool | str = True) -> Any:
    """Open ``request`` (which may carry credentials) without following a redirect: a 3xx is
    raised as urllib's ``HTTPError`` (``redirect_refused`` says what it means)."""
    context = tls_context(verify) if request.full_url.startswith("https:") else None
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                         _NoRedirect())
    return opener.open(request, timeout=timeout)


def get_json(url: str, *, timeout: float = 3.0, headers: Mapping[str, str] | None = None,
             verify: bool | str = True, proxy: str | None = None) -> Any:
    """GET ``url`` (with ``headers``, e.g. credentials) and parse JSON; None when it does not
    answer with 200 and JSON (yet). ``verify`` is the TLS trust of an https URL, as
    ``Access.verify`` carries it (``tls_context``); ``proxy`` the proxy ``Access.proxy``
    names (None: direct, whatever the environment says)."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        context = tls_context(verify) if url.startswith("https:") else None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler(_proxies(proxy)),
                                             urllib.request.HTTPSHandler(context=context),
                                             _NoRedirect())
        with opener.open(request, timeout=timeout) as resp:
            if resp.status != 200:
                return None
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        if 300 <= err.code < 400 and url not in _said:
            _said.add(url)
            log.warning("%s", redirect_refused(url, err.headers.get("Location")))
        return None
    # (HTTPException: an answer cut short or not HTTP at all, from a proxy or port-forward)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):
        return None
