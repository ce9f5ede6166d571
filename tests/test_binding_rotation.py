"""Bindings under SERVICE_BINDING_ROOT rotated in place, as Kubernetes does it: a new
timestamped directory, then an atomic rename of the ``..data`` symlink, then the old
directory removed. Bindings notice the change (at most once per interval, or on refresh())
and swap in a fully re-read snapshot: never half-old, half-new credentials."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

import propagation.bindings as bindings_module
from propagation.bindings import Bindings
from propagation.errors import ConfigurationError


class SecretVolume:
    """One binding folder laid out like a Kubernetes secret volume (kubelet's AtomicWriter)."""

    def __init__(self, root: Path, name: str, files: dict[str, str]) -> None:
        self.folder = root / name
        self.folder.mkdir()
        self.version = 0
        self.current: Path | None = None
        self.write(files)

    def write(self, files: dict[str, str], *, remove_old: bool = True) -> Path | None:
        self.version += 1
        directory = self.folder / f"..2026_11_30_04_00_0{self.version}.{1000 + self.version}"
        directory.mkdir()
        for key, value in files.items():
            (directory / key).write_text(value)
        tmp = self.folder / "..data_tmp"
        os.symlink(directory.name, tmp)
        os.rename(tmp, self.folder / "..data")  # the atomic swap
        for key in files:
            link = self.folder / key
            if not link.is_symlink():
                os.symlink(f"..data/{key}", link)
        old, self.current = self.current, directory
        if old is not None and remove_old:
            shutil.rmtree(old)
        return old


def xsuaa_files(version: int, **extra: str) -> dict[str, str]:
    return {"type": "xsuaa", "clientid": f"id-{version}", "clientsecret": f"secret-{version}-VALUE",
            "url": "https://provider.authentication.eu10.hana.ondemand.com", **extra}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pair(b: Bindings) -> tuple[str, str]:
    found = b.find(label="xsuaa")
    assert found is not None
    return found.credentials["clientid"], found.credentials["clientsecret"]


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    return SecretVolume(tmp_path, "xsuaa", xsuaa_files(1))


def load(volume: SecretVolume, clock: Clock | None = None, interval: float | None = 10.0) -> Bindings:
    return Bindings.from_env({"SERVICE_BINDING_ROOT": str(volume.folder.parent)}, cwd=volume.folder.parent,
                             refresh_interval=interval, clock=clock or Clock())


def test_rotation_is_noticed_after_the_interval(volume: SecretVolume) -> None:
    clock = Clock()
    b = load(volume, clock)
    assert pair(b) == ("id-1", "secret-1-VALUE") and b.generation == 0
    volume.write(xsuaa_files(2))
    clock.now += 9.9
    assert pair(b) == ("id-1", "secret-1-VALUE")  # not checked yet: lookups stay cheap
    clock.now += 0.1
    assert pair(b) == ("id-2", "secret-2-VALUE")
    assert b.generation == 1
    clock.now += 10
    assert pair(b) == ("id-2", "secret-2-VALUE") and b.generation == 1  # checked again, unchanged


def test_refresh_on_demand(volume: SecretVolume) -> None:
    b = load(volume, interval=None)
    assert b.refresh() is False
    volume.write(xsuaa_files(2))
    assert pair(b) == ("id-1", "secret-1-VALUE")  # interval None: no automatic check
    assert b.refresh() is True
    assert pair(b) == ("id-2", "secret-2-VALUE")
    assert b.refresh() is False


def test_snapshot_is_pinned(volume: SecretVolume) -> None:
    b = load(volume)
    snap = b.snapshot()
    volume.write(xsuaa_files(2))
    assert b.refresh() is True
    assert pair(snap) == ("id-1", "secret-1-VALUE")
    assert pair(b) == ("id-2", "secret-2-VALUE")
    assert snap.refresh() is False


def rotate_during_read(monkeypatch: pytest.MonkeyPatch, volume: SecretVolume, remove_old: bool) -> list[str]:
    """Swap ``..data`` right after the client id or secret of version 1 was read (whichever
    comes first): reading file by file through the visible links would now pair it with the
    other half of version 2."""
    real: Callable[[Path], str] = bindings_module._read_text
    read: list[str] = []

    def reading(path: Path) -> str:
        text = real(path)
        read.append(text)
        if text in ("id-1", "secret-1-VALUE") and volume.version == 1:
            volume.write(xsuaa_files(2), remove_old=remove_old)
        return text

    monkeypatch.setattr(bindings_module, "_read_text", reading)
    return read


@pytest.mark.parametrize("remove_old", [pytest.param(False, id="swap"), pytest.param(True, id="swap-and-remove-old")])
def test_swap_during_the_first_read_gives_one_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remove_old: bool
) -> None:
    volume = SecretVolume(tmp_path, "xsuaa", xsuaa_files(1))
    read = rotate_during_read(monkeypatch, volume, remove_old)
    b = load(volume)
    assert pair(b) == ("id-2", "secret-2-VALUE")
    assert ("id-1" in read or "secret-1-VALUE" in read) and "id-2" in read and "secret-2-VALUE" in read


@pytest.mark.parametrize("remove_old", [pytest.param(False, id="swap"), pytest.param(True, id="swap-and-remove-old")])
def test_swap_during_a_refresh_gives_one_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remove_old: bool
) -> None:
    volume = SecretVolume(tmp_path, "xsuaa", xsuaa_files(1))
    b = load(volume)
    volume.write(xsuaa_files(2))
    real: Callable[[Path], str] = bindings_module._read_text

    def reading(path: Path) -> str:
        text = real(path)
        if text in ("id-2", "secret-2-VALUE") and volume.version == 2:
            volume.write(xsuaa_files(3), remove_old=remove_old)
        return text

    monkeypatch.setattr(bindings_module, "_read_text", reading)
    assert b.refresh() is True
    assert pair(b) == ("id-3", "secret-3-VALUE")


def test_malformed_rotation_keeps_the_old_snapshot(volume: SecretVolume, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    b = load(volume, clock)
    broken = xsuaa_files(2)
    del broken["type"]
    volume.write(broken)
    clock.now += 10
    with caplog.at_level(logging.WARNING, logger="propagation"):
        assert pair(b) == ("id-1", "secret-1-VALUE")
    assert "rotated service bindings not taken" in caplog.text and "has no 'type' file" in caplog.text
    assert "secret-" not in caplog.text
    with pytest.raises(ConfigurationError, match="has no 'type' file"):
        b.refresh()
    volume.write(xsuaa_files(3))
    assert b.refresh() is True and pair(b) == ("id-3", "secret-3-VALUE")


def test_rotation_log_names_no_secret(volume: SecretVolume, caplog: pytest.LogCaptureFixture) -> None:
    b = load(volume)
    volume.write(xsuaa_files(2))
    with caplog.at_level(logging.INFO, logger="propagation"):
        b.refresh()
    assert "service bindings rotated under SERVICE_BINDING_ROOT: ['xsuaa:xsuaa'] (generation 1)" in caplog.text
    assert "secret-" not in caplog.text


def test_plain_folders_and_new_bindings(tmp_path: Path) -> None:
    """Without the ..data indirection (a hand-made folder), file changes and new folders count."""
    folder = tmp_path / "xsuaa"
    folder.mkdir()
    for key, value in xsuaa_files(1).items():
        (folder / key).write_text(value)
    b = Bindings.from_env({"SERVICE_BINDING_ROOT": str(tmp_path)}, refresh_interval=None)
    assert b.refresh() is False
    (folder / "clientsecret").write_text("secret-22-VALUE")  # another size: noticed whatever the mtime granularity
    assert b.refresh() is True and pair(b) == ("id-1", "secret-22-VALUE")
    SecretVolume(tmp_path, "dest", {"type": "destination", "clientid": "d"})
    assert b.refresh() is True
    assert [x.name for x in b] == ["dest", "xsuaa"]


@pytest.mark.parametrize(
    "environ",
    [pytest.param({}, id="nothing"), pytest.param({"VCAP_SERVICES": '{"xsuaa": [{"name": "x", "credentials": {}}]}'}, id="vcap")],
)
def test_nothing_to_rotate(environ: dict[str, Any], tmp_path: Path) -> None:
    b = Bindings.from_env(environ, cwd=tmp_path)
    assert b.refresh() is False and b.generation == 0


def test_vcap_bindings_stay_beside_rotated_ones(volume: SecretVolume) -> None:
    env = {"VCAP_SERVICES": '{"identity": [{"name": "ias", "credentials": {"clientid": "i"}}]}',
           "SERVICE_BINDING_ROOT": str(volume.folder.parent)}
    b = Bindings.from_env(env, refresh_interval=None)
    volume.write(xsuaa_files(2))
    assert b.refresh() is True
    assert [(x.label, x.name) for x in b] == [("identity", "ias"), ("xsuaa", "xsuaa")]
    assert b.sources == ("VCAP_SERVICES", f"SERVICE_BINDING_ROOT ({volume.folder.parent})")


def test_derived_values_follow_rotation(volume: SecretVolume) -> None:
    from propagation.rotation import Derived

    b = load(volume, interval=None)
    builds: list[tuple[str, str]] = []

    def build(snapshot: Bindings) -> tuple[str, str]:
        builds.append(pair(snapshot))
        return builds[-1]

    derived = Derived(b, build)
    assert derived.get() == derived.get() == ("id-1", "secret-1-VALUE")
    volume.write(xsuaa_files(2))
    assert derived.get() == ("id-1", "secret-1-VALUE")  # not refreshed yet
    b.refresh()
    assert derived.get() == derived.get() == ("id-2", "secret-2-VALUE")
    assert builds == [("id-1", "secret-1-VALUE"), ("id-2", "secret-2-VALUE")]


def test_derived_build_error_is_not_memoised(volume: SecretVolume) -> None:
    from propagation.rotation import Derived

    b = load(volume, interval=None)
    outcomes: list[Any] = [ConfigurationError("bad binding"), ("ok", "ok")]

    def build(snapshot: Bindings) -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    derived = Derived(b, build)
    with pytest.raises(ConfigurationError, match="bad binding"):
        derived.get()
    assert derived.get() == ("ok", "ok")


def test_a_rotated_connectivity_secret_is_used_by_the_next_on_premise_call(tmp_path: Path) -> None:
    """End to end through the engine: Kubernetes rotates the connectivity client's secret; the
    next call's token request carries the new one, the old one never again."""
    import json as _json
    import time as _time
    from urllib.parse import parse_qs

    import responses

    import jwtkit
    from propagation import Propagator
    from propagation.caches.memory import MemoryTokenCache
    from propagation.exchange.oauth import OAuthClient

    files = lambda v: {"type": "connectivity", "clientid": "conn-client", "clientsecret": f"conn-secret-{v}",  # noqa: E731
                       "token_service_url": "https://provider.authentication.eu10.hana.ondemand.com",
                       "onpremise_proxy_host": "proxy.internal", "onpremise_proxy_http_port": "20003"}
    conn = SecretVolume(tmp_path, "conn", files(1))
    clock = Clock()
    bindings = Bindings.from_env({"SERVICE_BINDING_ROOT": str(tmp_path)}, refresh_interval=10.0, clock=clock)
    engine = Propagator(environ={"destinations": _json.dumps([{"name": "S4", "url": "http://s4:44300", "ProxyType": "OnPremise",
                                                                "Authentication": "BasicAuthentication", "User": "u", "Password": "p"}])},
                        bindings=bindings, cache=MemoryTokenCache(), oauth=OAuthClient(retries=0))
    user = jwtkit.unsigned({"user_name": "alice", "zid": "z", "exp": int(_time.time()) + 3600, "grant_type": "password"})
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, "https://provider.authentication.eu10.hana.ondemand.com/oauth/token",
                 json={"access_token": "px", "expires_in": 0})  # not cached: every call asks again
        rsps.add(responses.GET, "http://s4:44300/x", json={})
        engine.session("S4", user_token=user).get("x")
        conn.write(files(2))
        clock.now += 11  # the next check notices the swap
        engine.session("S4", user_token=user).get("x")
        secrets = [parse_qs(c.request.body)["client_secret"][0] for c in rsps.calls if "oauth" in c.request.url]
    assert secrets == ["conn-secret-1", "conn-secret-2"]
