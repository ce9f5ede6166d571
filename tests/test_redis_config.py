"""Where the Redis token cache lives: URLs and ``redis-cache`` bindings (Redis on SAP BTP) →
one redis-py URL and a cluster flag; the BTP ``uri``'s placeholder user, real ACL users and
TLS, each against a real ``redis-server``."""

from __future__ import annotations

import base64
import logging
import time
import uuid
from typing import Iterator

import pytest

from propagation.bindings import Binding, Bindings
from propagation.caches.memory import CacheKey
from propagation.errors import ConfigurationError
from propagation.exchange.oauth import TokenResponse
from propagation.redis_cache import RedisTokenCache
from propagation.caches.redis_config import RedisTarget, target_from_env
from propagation.sandbox.pki import Pki
from redis_server import RedisServer, ensure_redis_server

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
PASSWORD = "pw-SECRET-4711"


def _binary() -> str:
    binary = ensure_redis_server()
    if binary is None:
        pytest.fail("redis-server is not installed and could not be installed: apt-get install -y redis-server")
    return binary


def key() -> CacheKey:
    return CacheKey(destination="S4", grant="jwt-bearer", client="c", tenant="t1", user=f"fp-{uuid.uuid4().hex[:6]}")


def token() -> TokenResponse:
    return TokenResponse(access_token="at-VALUE", expires_at=time.time() + 3600)


@pytest.mark.parametrize("given, cluster, tls, url, is_cluster", [
    pytest.param("rediss://no-user-name-for-redis:p%40ss@h.example:6380", False, False,
                 "rediss://:p%40ss@h.example:6380", False, id="btp-placeholder-user-dropped"),
    pytest.param("rediss://alice:pw@h:6380", False, False, "rediss://alice:pw@h:6380", False, id="real-acl-user-kept"),
    pytest.param("redis://:pw@h:6379/2", False, False, "redis://:pw@h:6379/2", False, id="password-only-db-2"),
    pytest.param("redis://h:7000?cluster=true", False, False, "redis://h:7000", True, id="cluster-query"),
    pytest.param("redis://h:7000/0?cluster=1&ssl_cert_reqs=required", False, False,
                 "redis://h:7000?ssl_cert_reqs=required", True, id="cluster-query-other-options-kept"),
    pytest.param("rediss://no-user-name-for-redis:pw@h:6380", True, False, "rediss://:pw@h:6380", True,
                 id="binding-cluster-mode"),
    pytest.param("redis://:pw@h:6379", False, True, "rediss://:pw@h:6379", False, id="binding-tls-upgrades"),
    pytest.param("redis://no-user-name-for-redis@h:6379", False, False, "redis://h:6379", False, id="placeholder-no-password"),
])
def test_parse(given, cluster, tls, url, is_cluster):
    target = RedisTarget.parse(given, cluster=cluster, tls=tls)
    assert (target.url, target.cluster) == (url, is_cluster)
    assert "pw" not in repr(target) and "pw" not in target.where and "alice" not in target.where


@pytest.mark.parametrize("creds, url, cluster", [
    pytest.param({"hostname": "h", "port": 6380, "password": "a/b@c", "tls": True, "cluster_mode": True},
                 "rediss://:a%2Fb%40c@h:6380", True, id="hostname-tls-cluster"),
    pytest.param({"hostname": "h", "port": "6379", "password": "", "tls": "false", "cluster_mode": "false"},
                 "redis://h:6379", False, id="hostname-plain"),
    pytest.param({"uri": "rediss://no-user-name-for-redis:pw@h:6380", "hostname": "x", "tls": True, "cluster_mode": True},
                 "rediss://:pw@h:6380", True, id="uri-preferred-cluster-mode-applies"),
])
def test_binding_credentials(creds, url, cluster):
    binding = Binding(name="cache", label="redis-cache", credentials=creds, plan="standard", tags=("cache",), source="t")
    target = target_from_env({}, Bindings([binding]))
    assert target is not None and (target.url, target.cluster) == (url, cluster)


@pytest.mark.parametrize("url, match", [
    pytest.param("http://h:6379", "redis:// or rediss://", id="scheme"),
    pytest.param("redis://", "names no host", id="no-host"),
])
def test_bad_urls_are_configuration_errors(url, match):
    with pytest.raises(ConfigurationError, match=match):
        target_from_env({"PROPAGATION_CACHE_URL": url})


def test_bad_port_and_missing_host_in_a_binding():
    for creds, match in (({"hostname": "h", "port": "x"}, "'port' is not a number"), ({}, "neither 'uri' nor 'hostname'")):
        binding = Binding(name="cache", label="redis-cache", credentials=creds, plan="s", tags=(), source="t")
        with pytest.raises(ConfigurationError, match=match):
            target_from_env({}, Bindings([binding]))


@pytest.fixture(scope="module")
def password_server() -> Iterator[RedisServer]:
    """Password-only AUTH (``requirepass``), plus one real ACL user ``alice``."""
    srv = RedisServer(_binary(), args=("--requirepass", PASSWORD, "--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all")).start()
    yield srv
    srv.close()


@pytest.mark.parametrize("userinfo, works", [
    pytest.param(f"no-user-name-for-redis:{PASSWORD}", True, id="btp-placeholder-user"),
    pytest.param(f":{PASSWORD}", True, id="password-only"),
    pytest.param("alice:alice-pw", True, id="real-acl-user"),
    pytest.param("alice:wrong", False, id="wrong-password-falls-back"),
])
def test_auth_against_a_password_only_server(password_server, userinfo, works, caplog):
    binding = Binding(name="cache", label="redis-cache", plan="standard", tags=("cache",), source="t",
                      credentials={"uri": f"redis://{userinfo}@127.0.0.1:{password_server.port}", "cluster_mode": False})
    cache = RedisTokenCache.from_env({"PROPAGATION_CACHE_KEY": KEY_B64}, Bindings([binding]), prefix=uuid.uuid4().hex[:8])
    assert cache is not None
    k = key()
    assert cache.get_or_fetch(k, token)[1] is False
    assert cache.available is works
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert bool(warnings) is (not works)
    assert all(PASSWORD not in w and "alice-pw" not in w for w in warnings)
    cache.close()


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    authority = Pki(prefix="propagation-redis-tls-")
    yield authority
    authority.cleanup()


def test_tls_binding_on_a_tls_only_server(pki, monkeypatch, caplog):
    """``tls: true`` → ``rediss``: certificate verified against the trust store (here the
    sandbox CA via ``SSL_CERT_FILE``), hostname checked; a plain client could not talk to it."""
    srv = RedisServer(_binary(), args=("--requirepass", PASSWORD), tls=pki).start()
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
        creds = {"hostname": "localhost", "port": srv.port, "password": PASSWORD, "tls": True, "cluster_mode": False,
                 "uri": f"rediss://no-user-name-for-redis:{PASSWORD}@localhost:{srv.port}"}
        binding = Binding(name="cache", label="redis-cache", credentials=creds, plan="standard", tags=("cache",), source="t")
        cache = RedisTokenCache.from_env({"PROPAGATION_CACHE_KEY": KEY_B64}, Bindings([binding]), prefix="tls")
        assert cache is not None and cache.where.startswith("rediss://localhost:")
        k = key()
        assert cache.get_or_fetch(k, token)[1] is False
        assert cache.available and not [r for r in caplog.records if r.levelno >= logging.WARNING]
        again = RedisTokenCache(f"rediss://:{PASSWORD}@localhost:{srv.port}", key=KEY, prefix="tls", near_maxsize=0)
        assert again.get(k) is not None  # it really is in Redis, over TLS
        plain = RedisTokenCache(f"redis://:{PASSWORD}@localhost:{srv.port}", key=KEY, prefix="tls", socket_timeout=0.3)
        assert plain.get(k) is None and not plain.available  # no TLS → no Redis, the fallback answers
        for c in (cache, again, plain):
            c.close()
    finally:
        srv.close()


@pytest.mark.parametrize("environ, message", [
    pytest.param({"PROPAGATION_CACHE_NEAR_SIZE": "-1"}, "PROPAGATION_CACHE_NEAR_SIZE must be 0", id="near-negative"),
    pytest.param({"PROPAGATION_CACHE_NEAR_SIZE": "many"}, "PROPAGATION_CACHE_NEAR_SIZE must be a whole number", id="near-text"),
    pytest.param({"PROPAGATION_CACHE_TIMEOUT": "soon"}, "PROPAGATION_CACHE_TIMEOUT must be a number of seconds", id="timeout"),
])
def test_bad_cache_settings_name_the_variable(environ, message):
    with pytest.raises(ConfigurationError, match=message):
        RedisTokenCache.from_env({"PROPAGATION_CACHE_URL": "redis://127.0.0.1:1", "PROPAGATION_CACHE_KEY": KEY_B64, **environ})


def test_near_size_setting(password_server):
    base = {"PROPAGATION_CACHE_URL": f"redis://:{PASSWORD}@127.0.0.1:{password_server.port}", "PROPAGATION_CACHE_KEY": KEY_B64}
    assert RedisTokenCache.from_env({**base, "PROPAGATION_CACHE_NEAR_SIZE": "0"}).near is None
    assert RedisTokenCache.from_env({**base, "PROPAGATION_CACHE_NEAR_SIZE": "250"}).near.maxsize == 250
    assert RedisTokenCache.from_env(base).near.maxsize == 10_000
