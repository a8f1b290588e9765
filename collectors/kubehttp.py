"""A small Kubernetes REST client on urllib3: the few GETs the node agent makes.

Why not the ``kubernetes`` package: ``import kubernetes.client`` loads some 770
generated model modules, about 54 MB of resident memory, more than everything else the
agent holds (the agent's target is 100 MB on every GPU node). The agent makes three
kinds of request, all GETs of JSON that it parses itself: list and watch its own pods
(``fieldSelector=spec.nodeName=NODE``), list and watch its own node, and GET owner
objects. That needs an HTTP client, TLS verification and a bearer token, which is
what this module is.

Configuration:

* in a pod (:meth:`KubeClient.in_cluster`): ``https://$KUBERNETES_SERVICE_HOST:
  $KUBERNETES_SERVICE_PORT``, the service account's CA to verify the server, and its
  token, re-read every :data:`TOKEN_REFRESH_S` seconds and after a ``401``: bound
  service-account tokens are rotated by the kubelet (the official clients re-read the
  file about every minute too);
* elsewhere (:meth:`KubeClient.from_kubeconfig`): a kubeconfig, read by the
  ``kubernetes`` package's own loader (contexts, inline certificate data, exec plugins
  such as ``aws eks get-token``), imported only then: on a developer's machine its
  memory does not matter.

Deliberately left out: retries (the informer backs off on its own, and a retry inside
the client would hide an outage from the fault counts), redirects (the API server does
not send them, and following one would carry the token elsewhere), proxies, writes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import quote, urlencode

import urllib3

log = logging.getLogger("gpuledger.kubehttp")

#: Where Kubernetes mounts a pod's service account (token, ca.crt, namespace).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

#: How often the bearer token is read again (client-go and the Python client: 1 minute).
TOKEN_REFRESH_S = 60.0

#: (connect, read) seconds for a request that names no timeout.
DEFAULT_TIMEOUT = (5.0, 30.0)

USER_AGENT = "gpuledger-agent"


class ConfigError(Exception):
    """No usable configuration: not in a cluster, or a kubeconfig that cannot be loaded."""


class KubeError(Exception):
    """The API server answered with HTTP status >= 400.

    ``status`` and ``reason`` are the HTTP status and reason phrase (as on the
    ``kubernetes`` client's ApiException, so fault names such as ``http_403`` read
    them the same way); ``message`` is the Status object's message when the body has one
    (e.g. which RBAC rule is missing).
    """

    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.message = _status_message(body)
        super().__init__(f"HTTP {status} {reason}" + (f": {self.message}" if self.message else ""))


def _status_message(body: bytes) -> str:
    try:
        obj = json.loads(body)
    except ValueError:
        return ""
    return str(obj.get("message") or "") if isinstance(obj, dict) else ""


Timeout = float | tuple[float, float] | None


class KubeClient:
    """GETs against one API server, with a bearer token and/or a client certificate.

    ``authorization`` returns the ``Authorization`` header's value (``"Bearer ..."``) or
    None; it is called again every ``token_refresh_s`` seconds of ``clock`` and after a
    ``401``, so a rotated token is picked up without a restart. If a later call fails, the
    last value is kept (an API server still accepts a rotated-out token for a while) and
    the failure is logged. Safe to share between threads.
    """

    def __init__(
        self,
        host: str,
        *,
        authorization: Callable[[], str | None] | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        verify: bool = True,
        tls_server_name: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        token_refresh_s: float = TOKEN_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
        max_connections: int = 4,
    ) -> None:
        self.host = host.rstrip("/")
        self.timeout = timeout
        self._source = authorization
        self._refresh_s = token_refresh_s
        self._clock = clock
        self._auth: str | None = None
        self._auth_at: float | None = None
        self._lock = threading.Lock()
        tls: dict[str, Any] = {}
        if self.host.startswith("https:"):
            tls = {"cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE", "ca_certs": ca_file,
                   "cert_file": cert_file, "key_file": key_file}
            if tls_server_name:
                tls["server_hostname"] = tls_server_name
        # Watches hold a connection each (pods, node) beside the owner GETs; more than
        # max_connections at once are opened and then closed rather than waited for.
        self._pool = urllib3.PoolManager(num_pools=1, maxsize=max_connections, retries=False, **tls)
        if authorization is not None:
            self._authorization()  # a token that cannot be read is a configuration error, now

    # ------------------------------------------------------------------ configuration

    @classmethod
    def in_cluster(
        cls,
        service_account_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR,
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> "KubeClient":
        """The client of a pod: the API server's service address, the service account's
        CA and token. ConfigError when not in a pod (or nothing is mounted)."""
        env = os.environ if environ is None else environ
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise ConfigError("not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
        directory = Path(service_account_dir)
        token_file, ca_file = directory / "token", directory / "ca.crt"
        for path in (token_file, ca_file):
            if not path.is_file():
                raise ConfigError(f"{path} does not exist: is the service account token mounted?")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        try:
            return cls(f"https://{host}:{port}", authorization=bearer_from_file(token_file),
                       ca_file=str(ca_file), **kwargs)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot use the service account in {directory}: {err}") from None

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None, **kwargs: Any) -> "KubeClient":
        """The client a kubeconfig describes (``path``, else ``$KUBECONFIG``, else
        ``~/.kube/config``), through the ``kubernetes`` package's loader.

        Tokens from exec plugins and auth providers expire: the loader's refresh hook is
        called on the same schedule as a token file is re-read.
        """
        # Read $KUBECONFIG now: the loader reads it once, when it is imported. A list of
        # files (a:b) is merged by the loader, as kubectl does.
        where = path or os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            from kubernetes import client, config

            configuration = client.Configuration()
            config.load_kube_config(config_file=where, context=context, client_configuration=configuration,
                                    persist_config=False)
        except Exception as err:  # noqa: BLE001 - the loader raises many kinds (ConfigException, YAML, OSError)
            raise ConfigError(f"cannot load the kubeconfig {where}: {err}") from None

        def authorization() -> str | None:
            # auth_settings() runs the loader's refresh hook; the key is 'BearerToken' in
            # kubernetes 36 and 'authorization' before, auth_settings() reads either.
            return (configuration.auth_settings().get("BearerToken") or {}).get("value") or None

        return cls(configuration.host, authorization=authorization, ca_file=configuration.ssl_ca_cert,
                   cert_file=configuration.cert_file, key_file=configuration.key_file,
                   verify=configuration.verify_ssl,
                   tls_server_name=getattr(configuration, "tls_server_name", None), **kwargs)

    # ------------------------------------------------------------------ requests

    def get(self, path: str, query: Mapping[str, Any] | None = None, *, stream: bool = False,
            timeout: Timeout = None) -> Any:
        """GET ``path`` (``/api/v1/pods``) with ``query`` (None values left out, booleans as
        ``true``/``false``); the urllib3 response.

        With ``stream=False`` the body is read (``resp.data``) and the connection is back
        in the pool; with ``stream=True`` the caller reads it (:func:`iter_lines`) and
        hands it back with :func:`release`. Raises :class:`KubeError` for HTTP >= 400, and
        urllib3's own errors (``NewConnectionError``, ``ReadTimeoutError``, ``SSLError``)
        as they are: retries are off.
        """
        url = self.host + path
        params = {k: _param(v) for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urlencode(params, quote_via=quote)
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        auth = self._authorization()
        if auth:
            headers["Authorization"] = auth
        resp = self._pool.request(
            "GET", url, headers=headers, preload_content=not stream, retries=False, redirect=False,
            timeout=_timeout(self.timeout if timeout is None else timeout),
        )
        if resp.status == 401:
            self._expire_token()  # maybe rotated since we read it: read it again next time
        if resp.status >= 400:
            body = resp.data
            resp.release_conn()
            raise KubeError(resp.status, resp.reason or "", body)
        return resp

    def get_json(self, path: str, query: Mapping[str, Any] | None = None, timeout: Timeout = None) -> Any:
        """GET and decode a JSON body."""
        return json.loads(self.get(path, query, timeout=timeout).data)

    def close(self) -> None:
        """Close the pooled connections (open streams are closed by :func:`release`)."""
        self._pool.clear()

    # ------------------------------------------------------------------ the token

    def _authorization(self) -> str | None:
        if self._source is None:
            return None
        with self._lock:
            now = self._clock()
            if self._auth_at is not None and now - self._auth_at < self._refresh_s:
                return self._auth
            try:
                self._auth = self._source()
            except Exception as err:  # noqa: BLE001 - keep the last token rather than fail every request
                if self._auth_at is None:
                    raise
                log.warning("cannot read the API token again (%s); using the last one", err)
            self._auth_at = now
            return self._auth

    def _expire_token(self) -> None:
        with self._lock:
            self._auth_at = None


def bearer_from_file(path: str | os.PathLike[str]) -> Callable[[], str]:
    """An ``authorization`` callable that reads a token file (a service account's).

    The kubelet rotates a projected token by swapping a symlink, so each read sees a
    whole token, old or new.
    """
    def read() -> str:
        token = Path(path).read_text().strip()
        if not token:
            raise ValueError(f"{path} is empty")
        return f"Bearer {token}"
    return read


def iter_lines(resp: Any) -> Iterator[bytes]:
    """The non-empty lines of a streamed response (a watch: one JSON event a line).

    The API server sends a watch with chunked transfer encoding, and chunk boundaries
    fall anywhere: a line may span chunks, a chunk may hold several lines. Each chunk is
    handed on as soon as it arrives (``stream(None)`` reads whole chunks, never waiting to
    fill a buffer), so an event is applied when it is sent, not when more follow.
    """
    parts: list[bytes] = []
    for chunk in resp.stream(None):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if parts:
                parts.append(chunk[start:end])
                line = b"".join(parts)
                parts = []
            else:
                line = chunk[start:end]
            if line.strip():
                yield line
            start = end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
    line = b"".join(parts)
    if line.strip():
        yield line


def release(resp: Any) -> None:
    """Hand a streamed response's connection back: reused when its body was read to the
    end, closed when not (a half-read watch cannot carry another request)."""
    if not resp.closed:
        resp.close()
    resp.release_conn()


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _timeout(timeout: Timeout) -> urllib3.Timeout:
    if isinstance(timeout, tuple):
        return urllib3.Timeout(connect=timeout[0], read=timeout[1])
    return urllib3.Timeout(total=None, connect=timeout, read=timeout)
