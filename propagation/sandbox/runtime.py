"""The sandbox: the emulated BTP landscape served by real TLS servers on loopback.

:class:`Sandbox` binds one server per origin (ephemeral ports), builds the landscape model
for those origins, starts serving, and gives apps what Cloud Foundry would: ``VCAP_SERVICES``,
``destinations``, a CA bundle (``REQUESTS_CA_BUNDLE`` for requests, ``SSL_CERT_FILE`` for
httpx/sap-xssec), as environment or as a ``default-env.json``. Everything a run writes lives
in one private temporary folder, removed by :meth:`Sandbox.stop`.

Hosts: IAS answers as ``https://127.0.0.1:P`` with the domain ``0.0.1:P``, because sap-xssec
accepts an IAS issuer only as ``https://<label>.<domain>`` and ``*.localhost`` names do not
resolve everywhere. XSUAA (``uaadomain`` ``localhost:P``) answers, with ``hosts="labelled"``,
as ``https://<subdomain>.localhost:P`` per tenant — the shape of a real XSUAA URL, whose first
label names the tenant (the SAP Cloud SDK for JS selects the tenant from it); with
``hosts="plain"`` the provider's is ``https://localhost:P`` (no label). ``"auto"`` (default)
picks labelled when ``<provider>.localhost`` resolves to loopback here (systemd-resolved,
nss-myhostname, macOS), plain otherwise (glibc with ``files dns`` only). Subscriber tenants
(``tenants=``) get tokens at ``https://{uaadomain}/oauth/token`` with ``X-zid: <zone id>``
in both modes, and by their own host where it resolves.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import socket
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from .pki import Pki
from .servers import ConnectivityProxy, Incoming, OnPremiseService, Reply, Service

__all__ = ["Sandbox", "Model", "DEFAULT_DESTINATIONS", "STATE_ENV", "TENANTS_ENV", "ONPREM_VIRTUAL_HOST",
           "HOST_MODES", "labelled_hosts_resolve"]

#: Set in the environment of apps run against the sandbox: its private folder.
STATE_ENV = "PROPAGATION_SANDBOX"
#: Set in the environment of apps run against the sandbox: ``{"subdomain": "zone id", ...}``
#: of its tenants (the provider first), for ``X-zid`` token requests and ``token --tenant``.
TENANTS_ENV = "PROPAGATION_SANDBOX_TENANTS"
HOST_MODES = ("auto", "labelled", "plain")
ONPREM_VIRTUAL_HOST = "http://s4-virtual:44300"
#: The destinations every sandbox defines (``Landscape.destination`` specs), enough for every
#: example in ``examples/`` with its defaults:
#: S4: on-premise S/4HANA behind the Cloud Connector (location LOC1), as the user;
#: S4_CLOUD: an Internet OData service, jwt-bearer done by the Destination service;
#: S4_TECHNICAL: the same Internet service with a technical user (client_credentials), the
#: forum's failure. These live in the Destination service (found at runtime, as cockpit
#: destinations). BACKEND (in the ``destinations`` variable): an Internet API that gets the
#: user's token forwarded (``forwardAuthToken``). The Cloud Integration runtime is the
#: ``it-rt`` binding ``order-iflow`` (a destination by name).
DEFAULT_DESTINATIONS: tuple[str, ...] = (
    "S4 OnPremise PrincipalPropagation location=LOC1 sap-client=100",
    "S4_CLOUD OAuth2JWTBearer sap-client=100",
    "S4_TECHNICAL OAuth2ClientCredentials sap-client=100",
    "BACKEND NoAuthentication forward source=env",
)
#: Settings of the subaccount an app reads from its environment (``PROPAGATION_*``), taken
#: from these landscape attributes: the IAS client of the XSUAA trust (what
#: ``xsuaa-cross-consumption`` adds to ``aud``) and the IAS public (PKCE) client.
_APP_SETTINGS = {
    "PROPAGATION_XSUAA_TRUST_CLIENT_ID": "trust_client_id",
    "PROPAGATION_PUBLIC_CLIENTS": "public_client_id",
}


class Model(Protocol):
    """What the sandbox needs of ``propagation.testing.landscape.Landscape``."""

    def handle(self, request: Any) -> Reply: ...
    def check_proxy(self, request: Any) -> Reply | None: ...
    def environ(self) -> dict[str, str]: ...
    def default_env(self) -> dict[str, Any]: ...
    def destination(self, spec: str) -> Any: ...


def _landscape(origins: Mapping[str, Any], tenants: Sequence[str] = ("provider",)) -> tuple[Model, Callable[..., Any]]:
    from propagation.testing.landscape import Landscape, Origins, Request

    return Landscape(Origins(**origins), tenants=tenants), Request


def labelled_hosts_resolve(label: str = "provider") -> bool:
    """Whether ``<label>.localhost`` resolves, to loopback only, on this machine (no DNS change)."""
    try:
        infos = socket.getaddrinfo(f"{label}.localhost", 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


class Sandbox:
    """Start with ``with Sandbox() as sandbox:`` (or :meth:`start` / :meth:`stop`).

    ``model`` builds the landscape for a dict of ``Origins`` fields and returns it with its
    request type; the default is the real ``Landscape``. Tests of the transport pass a fake.
    """

    def __init__(
        self,
        *,
        destinations: Sequence[str] = DEFAULT_DESTINATIONS,
        model: Callable[[Mapping[str, Any]], tuple[Model, Callable[..., Any]]] | None = None,
        tenants: Sequence[str] = ("provider",),
        hosts: str = "auto",
    ) -> None:
        names = [t.strip() for t in tenants if t and t.strip()]
        if not names or len(set(names)) != len(names):
            raise ValueError("tenants: give distinct subdomains, the provider first")
        if hosts not in HOST_MODES:
            raise ValueError(f"hosts must be one of {', '.join(HOST_MODES)}, not {hosts!r}")
        self.tenants = tuple(names)
        self.hosts = hosts
        self._destination_specs = tuple(destinations)
        self._model_factory = model or (lambda origins: _landscape(origins, self.tenants))
        self.pki: Pki | None = None
        self.landscape: Model | None = None
        self._request_type: Callable[..., Any] | None = None
        self.services: dict[str, Service] = {}
        self.proxy: ConnectivityProxy | None = None
        self.origins: dict[str, Any] = {}
        self._written: list[Path] = []
        self._started = False
        self.labelled = False

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> "Sandbox":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        labelled = self.hosts == "labelled" or (self.hosts == "auto" and labelled_hosts_resolve(self.tenants[0]))
        self.labelled = labelled
        pki = self.pki = Pki(names=tuple(f"{t}.localhost" for t in self.tenants))
        tls = pki.server_context()
        s = self.services
        s["xsuaa"] = Service("xsuaa", tls, host=f"{self.tenants[0]}.localhost" if labelled else "localhost",
                             virtual_hosts="localhost")
        s["ias"] = Service("ias", tls, host="127.0.0.1")
        s["destination"] = Service("destination", tls, host="localhost")
        s["backend"] = Service("backend", tls, host="localhost")
        s["iflow"] = Service("iflow", tls, host="localhost")
        s["onprem"] = OnPremiseService("onprem", tls, ONPREM_VIRTUAL_HOST)
        proxy = self.proxy = ConnectivityProxy(client_tls=pki.client_context())
        xsuaa, ias = s["xsuaa"], s["ias"]
        self.origins = {
            "xsuaa": xsuaa.url,
            "uaadomain": f"localhost:{xsuaa.port}",
            "ias": ias.url,
            "ias_domain": f"0.0.1:{ias.port}",  # issuer https://127.0.0.1:P = https://<label>.<domain>
            "destination": s["destination"].url,
            "destination_token": xsuaa.url,
            "connectivity_token": xsuaa.url,
            "proxy_host": "127.0.0.1",
            "proxy_port": proxy.port,
            "backend": s["backend"].url,
            "iflow": s["iflow"].url,
            "onprem": ONPREM_VIRTUAL_HOST,
        }
        self.landscape, self._request_type = self._model_factory(self.origins)
        for spec in self._destination_specs:
            self.landscape.destination(spec)
        for service in (*s.values(), proxy):
            service.answer = self._answer
        proxy.check = self._check_proxy
        proxy.map(s["onprem"])  # type: ignore[arg-type]
        for service in (*s.values(), proxy):
            service.start()
        self._started = True
        self._write_state()

    def stop(self) -> None:
        """Stop every server and remove every file of this run (idempotent)."""
        for service in (*self.services.values(), *([self.proxy] if self.proxy else [])):
            try:
                service.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                pass
        self.services.clear()
        self.proxy = None
        for path in self._written:
            try:
                path.unlink()
            except OSError:
                pass
        self._written.clear()
        if self.pki is not None:
            self.pki.cleanup()
        self._started = False

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- transport → model ------------------------------------------------------------
    def _request(self, incoming: Incoming) -> Any:
        assert self._request_type is not None
        return self._request_type(
            method=incoming.method, url=incoming.url, headers=incoming.headers,
            body=incoming.body, via_proxy=incoming.via_proxy, connection=incoming.connection,
        )

    def _answer(self, incoming: Incoming) -> Reply:
        assert self.landscape is not None
        return self.landscape.handle(self._request(incoming))

    def _check_proxy(self, incoming: Incoming) -> Reply | None:
        assert self.landscape is not None
        return self.landscape.check_proxy(self._request(incoming))

    # -- what apps get --------------------------------------------------------------
    @property
    def directory(self) -> Path:
        if self.pki is None:
            raise RuntimeError("the sandbox is not started")
        return self.pki.directory

    @property
    def ca_file(self) -> Path:
        assert self.pki is not None
        return self.pki.ca_file

    @property
    def default_env_file(self) -> Path:
        return self.directory / "default-env.json"

    @property
    def env_file(self) -> Path:
        return self.directory / "sandbox.env"

    def environ(self) -> dict[str, str]:
        """The environment of an app running against the sandbox (to merge into ``os.environ``):
        bindings, ``destinations``, the CA bundle, and the subaccount's IAS settings
        (``PROPAGATION_XSUAA_TRUST_CLIENT_ID``, ``PROPAGATION_PUBLIC_CLIENTS``)."""
        assert self.landscape is not None
        env = dict(self.landscape.environ())
        for key, attribute in _APP_SETTINGS.items():
            value = getattr(self.landscape, attribute, None)
            if isinstance(value, str) and value:
                env[key] = value
        tenants = getattr(self.landscape, "tenants", None)
        if isinstance(tenants, Mapping):
            env[TENANTS_ENV] = json.dumps({name: getattr(t, "zid", "") for name, t in tenants.items()})
        ca = str(self.ca_file)
        loopback = ["localhost", "127.0.0.1", ".localhost"]
        no_proxy = ",".join(dict.fromkeys(filter(None, [*os.environ.get("NO_PROXY", "").split(","), *loopback])))
        env.update(
            {
                "REQUESTS_CA_BUNDLE": ca,  # requests: token endpoints, destinations, backends
                "SSL_CERT_FILE": ca,  # httpx: sap-xssec's key fetch
                "NO_PROXY": no_proxy,  # a corporate HTTP(S)_PROXY must not swallow loopback
                "no_proxy": no_proxy,
                STATE_ENV: str(self.directory),
            }
        )
        return env

    def default_env(self) -> dict[str, Any]:
        assert self.landscape is not None
        return dict(self.landscape.default_env())

    def _write_state(self) -> None:
        write_private(self.default_env_file, json.dumps(self.default_env(), indent=2) + "\n")
        write_private(self.env_file, env_file_text(self.environ()))

    def write(self, *, default_env: Path | None = None, env_file: Path | None = None, force: bool = False) -> list[Path]:
        """Copies of ``default-env.json`` / the env file where an app expects them; removed
        on :meth:`stop`. An existing file is not overwritten unless ``force``."""
        written: list[Path] = []
        for target, source in ((default_env, self.default_env_file), (env_file, self.env_file)):
            if target is None:
                continue
            target = Path(target)
            if target.exists() and not force:
                raise FileExistsError(f"{target} exists; remove it or pass --force")
            write_private(target, source.read_text())
            self._written.append(target)
            written.append(target)
        return written

    def urls(self) -> dict[str, str]:
        """Each server's origin, for printing."""
        out = {name: service.url for name, service in self.services.items() if name != "onprem"}
        if self.proxy is not None:
            out["connectivity proxy"] = f"http://127.0.0.1:{self.proxy.port} -> {ONPREM_VIRTUAL_HOST}"
        return out


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (it holds client secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def env_file_text(env: Mapping[str, str]) -> str:
    """``KEY='value'`` lines: valid for ``set -a; . FILE; set +a`` and for dotenv readers."""
    lines = ["# propagation sandbox: set -a; . THIS_FILE; set +a"]
    lines += [f"{key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    return "\n".join(lines) + "\n"


def read_env_file(path: Path) -> dict[str, str]:
    """Inverse of :func:`env_file_text` (used by ``token`` to find a running sandbox)."""
    env: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        parts = shlex.split(value)
        env[key] = parts[0] if parts else ""
    return env

