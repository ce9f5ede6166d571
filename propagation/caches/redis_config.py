"""Where the Redis token cache lives: ``PROPAGATION_CACHE_URL`` or a ``redis-cache`` binding
(Redis on SAP BTP), reduced to one URL and a cluster flag, and the redis-py clients for it.

Why one URL: redis-py's ``from_url`` already understands TLS (``rediss``), passwords, ACL
users and its own query options, for the single-node and the cluster client alike; every
source here is turned into such a URL, with two corrections BTP needs (DESIGN §5):

* the binding's ``uri`` carries the fixed placeholder user ``no-user-name-for-redis``; sent as
  an ACL user name it fails against a password-only server, so it is dropped (password-only
  ``AUTH``). Any other user name is a real ACL user and is kept;
* ``cluster_mode: true`` (binding) or ``?cluster=true`` (URL) selects redis-py's
  ``RedisCluster`` — the endpoint is a cluster configuration endpoint, and a plain client
  would get ``MOVED`` for most keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..bindings import Bindings

__all__ = ["RedisTarget", "target_from_env", "PLACEHOLDER_USER", "CACHE_URL_ENV", "REDIS_LABEL"]

CACHE_URL_ENV = "PROPAGATION_CACHE_URL"
#: Label of a bound Redis service (BTP "Redis on SAP BTP, hyperscaler option").
REDIS_LABEL = "redis-cache"
#: The user part of a BTP Redis binding's ``uri``: not an ACL user.
PLACEHOLDER_USER = "no-user-name-for-redis"
_TRUE = ("true", "1", "yes", "on")


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() in _TRUE


@dataclass(frozen=True, repr=False)
class RedisTarget:
    """A Redis (or Redis Cluster) endpoint. ``url`` may hold a password: never log it; log
    ``where`` (scheme, host, port, mode)."""

    url: str
    cluster: bool = False

    @classmethod
    def parse(cls, url: str, *, cluster: bool = False, tls: bool = False) -> "RedisTarget":
        """Normalise ``url``: drop the BTP placeholder user and the ``cluster`` query option
        (which sets ``cluster``); ``tls`` upgrades ``redis://`` to ``rediss://``."""
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss"):
            raise ConfigurationError(f"{CACHE_URL_ENV} must be a redis:// or rediss:// URL (got scheme {scheme!r}).")
        if not parts.hostname:
            raise ConfigurationError(f"The Redis URL names no host ({scheme}://…).")
        query = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name.lower() in ("cluster", "cluster_mode"):
                cluster = cluster or _flag(value)
            else:
                query.append((name, value))
        if tls:
            scheme = "rediss"
        netloc = parts.netloc.rpartition("@")[2]
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        if userinfo:
            user, colon, password = userinfo.partition(":")
            if user == PLACEHOLDER_USER:
                user = ""
            netloc = f"{user}{':' + password if colon else ''}@{netloc}" if (user or password) else netloc
        path = "" if cluster else parts.path  # a cluster has database 0 only
        return cls(urlunsplit((scheme, netloc, path, urlencode(query), "")), cluster)

    @classmethod
    def from_credentials(cls, name: str, creds: Mapping[str, Any]) -> "RedisTarget":
        """A ``redis-cache`` binding's credentials: ``uri``, else ``hostname``/``port``/``password``;
        ``tls`` and ``cluster_mode`` apply to both."""
        tls, cluster = _flag(creds.get("tls")), _flag(creds.get("cluster_mode"))
        if creds.get("uri"):
            return cls.parse(str(creds["uri"]), cluster=cluster, tls=tls)
        if not creds.get("hostname"):
            raise ConfigurationError(f"Binding '{name}' (label {REDIS_LABEL}) has neither 'uri' nor 'hostname'.")
        try:
            port = int(creds.get("port") or 6379)
        except (TypeError, ValueError):
            raise ConfigurationError(f"Binding '{name}' (label {REDIS_LABEL}): 'port' is not a number.") from None
        password = str(creds.get("password") or "")
        auth = f":{quote(password, safe='')}@" if password else ""
        return cls.parse(f"{'rediss' if tls else 'redis'}://{auth}{creds['hostname']}:{port}", cluster=cluster)

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss:")

    @property
    def where(self) -> str:
        """Scheme, host, port and mode: never user info."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{' (cluster)' if self.cluster else ''}"

    def __repr__(self) -> str:
        return f"RedisTarget({self.where!r})"

    # -- clients ------------------------------------------------------------------------------
    def client(self, **options: Any) -> Any:
        """A blocking redis-py client (``Redis`` or ``RedisCluster``) with ``options``."""
        import redis
        from redis.cluster import RedisCluster

        if self.cluster:
            return RedisCluster.from_url(self.url, **_cluster_options(options))
        return redis.Redis.from_url(self.url, **options)

    def async_client(self, **options: Any) -> Any:
        """The ``redis.asyncio`` twin of :meth:`client` (one per event loop)."""
        import redis.asyncio as aredis
        from redis.asyncio.cluster import RedisCluster

        if self.cluster:
            return RedisCluster.from_url(self.url, **_cluster_options(options))
        return aredis.Redis.from_url(self.url, **options)


def _cluster_options(options: dict[str, Any]) -> dict[str, Any]:
    # The cluster client follows MOVED/ASK and re-reads the slot map on its own; a few fast
    # attempts let it do that, and a node that stays down falls back to memory quickly.
    out = {**options, "require_full_coverage": False}
    retry = options.get("retry")
    if retry is not None:
        from redis.backoff import NoBackoff

        out["retry"] = type(retry)(NoBackoff(), 2)
    return out


def target_from_env(environ: Mapping[str, str], bindings: "Bindings | None" = None) -> RedisTarget | None:
    """The Redis ``PROPAGATION_CACHE_URL`` or a ``redis-cache`` binding describes, else ``None``."""
    url = (environ.get(CACHE_URL_ENV) or "").strip()
    if url:
        return RedisTarget.parse(url)
    if bindings is not None:
        binding = bindings.find(label=REDIS_LABEL)
        if binding is not None:
            return RedisTarget.from_credentials(binding.name, binding.credentials)
    return None
