"""Service bindings: ``VCAP_SERVICES`` (Cloud Foundry, read with ``cfenv``), Kubernetes /
Kyma bindings under ``SERVICE_BINDING_ROOT`` (a folder per binding, a file per credential
key; rotated in place, re-read without a restart), and ``default-env.json`` in the working
directory for local runs.

Every malformed input raises :class:`~propagation.errors.ConfigurationError` naming the
variable, file or JSON path at fault, never a credential value (it may end up in a log)."""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import cfenv

from ._log import logger
from .errors import ConfigurationError

__all__ = ["Binding", "Bindings", "load_default_env", "default_env_path", "parse_json"]

#: The file the approuter and CAP read for local runs (``{"VCAP_SERVICES": …, "destinations": […]}``).
DEFAULT_ENV_FILE = "default-env.json"


@dataclass(frozen=True, repr=False)
class Binding:
    """One bound service instance. ``repr`` never shows credentials."""

    name: str  # instance name
    label: str  # service offering: xsuaa, identity, destination, connectivity, it-rt, ...
    credentials: Mapping[str, Any] = field(default_factory=dict)
    plan: str | None = None
    tags: tuple[str, ...] = ()
    source: str = ""  # "VCAP_SERVICES", "SERVICE_BINDING_ROOT (/bindings/xsuaa)", "default-env.json (/app/default-env.json)"

    def __repr__(self) -> str:
        return f"Binding(name={self.name!r}, label={self.label!r}, plan={self.plan!r}, source={self.source!r})"


# -- JSON and default-env.json ---------------------------------------------------------------
def parse_json(text: str, what: str) -> Any:
    """``json.loads`` whose error names ``what`` and the position, never the content (it may hold secrets)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{what} is not valid JSON (line {exc.lineno} column {exc.colno}): {exc.msg}"
        ) from None


def default_env_path(cwd: str | os.PathLike[str] | None = None) -> Path:
    """Where ``default-env.json`` is looked for: the given directory, else the working directory."""
    return Path(os.getcwd() if cwd is None else cwd) / DEFAULT_ENV_FILE


def load_default_env(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The parsed ``default-env.json`` of ``cwd`` (default: the working directory), or ``None``.

    This is the approuter/CAP convention for running locally with the cloud's configuration;
    an unparseable file is an error rather than silently ignored, since the developer meant
    it to be read.
    """
    path = default_env_path(cwd)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path} is not UTF-8 text") from None
    data = parse_json(text, str(path))
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} is not a JSON object (found {_json_type(data)})")
    return data


_JSON_TYPES: tuple[tuple[Any, str], ...] = (
    (bool, "boolean"), ((int, float), "number"), (str, "string"), (list, "array"), (dict, "object"),
)


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages that must not show the value."""
    if value is None:
        return "null"
    return next((name for kinds, name in _JSON_TYPES if isinstance(value, kinds)), type(value).__name__)


# -- Cloud Foundry: VCAP_SERVICES ---------------------------------------------------------------
def _vcap_bindings(data: Any, where: str, source: str) -> list[Binding]:
    """Bindings of a parsed ``VCAP_SERVICES`` object; ``where`` prefixes the JSON path in errors."""
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where} is not a JSON object (found {_json_type(data)})")
    out: list[Binding] = []
    for offering, instances in data.items():
        path = f"{where}[{offering!r}]"
        if not isinstance(instances, list):
            raise ConfigurationError(f"{path} is not an array (found {_json_type(instances)})")
        for index, entry in enumerate(instances):
            here = f"{path}[{index}]"
            if not isinstance(entry, dict):
                raise ConfigurationError(f"{here} is not an object (found {_json_type(entry)})")
            # cfenv is the reader of record for a CF service entry (name, credentials).
            service = cfenv.Service(entry)
            if not isinstance(entry.get("credentials"), dict):
                raise ConfigurationError(f"{here} has no 'credentials' object")
            name = service.name or entry.get("instance_name")
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"{here} has no 'name'")
            label = entry.get("label") or offering
            if not isinstance(label, str) or not label:
                raise ConfigurationError(f"{here} ('{name}') has a 'label' that is not a non-empty string")
            plan = entry.get("plan")
            if plan is not None and not isinstance(plan, str):
                raise ConfigurationError(f"{here} ('{name}') has a 'plan' that is not a string")
            tags = entry.get("tags") or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ConfigurationError(f"{here} ('{name}') has 'tags' that are not an array of strings")
            out.append(
                Binding(
                    name=name,
                    label=label,
                    credentials=service.credentials,
                    plan=plan,
                    tags=tuple(tags),
                    source=source,
                )
            )
    return out


# -- Kubernetes / Kyma: SERVICE_BINDING_ROOT (servicebinding.io) --------------------------------
#: Files that describe the binding rather than hold credentials (without a ``.metadata`` file).
_K8S_METADATA = frozenset({"type", "provider", "label", "plan", "tags", "instance_name", "instance_guid"})
_METADATA_FILE = ".metadata"
_DATA_LINK = "..data"
_READ_ATTEMPTS = 5
#: Seconds between two checks of ``SERVICE_BINDING_ROOT`` for rotated bindings.
DEFAULT_REFRESH_INTERVAL = 10.0


@dataclass(frozen=True)
class _Property:
    name: str
    format: str = "text"  # "text" | "json" | "auto" (no .metadata: JSON-looking objects/arrays are parsed)
    container: bool = False  # the file holds the whole credentials object (BTP operator `secretKey`)


def _read_text(path: Path) -> str:
    """A credential file as text, minus one trailing newline (editors and ``echo`` add one)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _read_value(path: Path, fmt: str) -> Any:
    text = _read_text(path)
    if fmt == "json":
        return parse_json(text, str(path))
    if fmt == "auto" and text.lstrip()[:1] in ("{", "["):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, (dict, list)):
            return value
    return text


def _metadata_properties(data: Mapping[str, Any], key: str, path: Path) -> list[_Property]:
    items = data.get(key) or []
    if not isinstance(items, list):
        raise ConfigurationError(f"{path}: '{key}' is not an array")
    out: list[_Property] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ConfigurationError(f"{path}: {key}[{index}] has no 'name'")
        fmt = item.get("format", "text")
        if fmt not in ("text", "json"):
            raise ConfigurationError(f"{path}: {key}[{index}] ('{item['name']}') has format {fmt!r}, expected 'text' or 'json'")
        out.append(_Property(item["name"], fmt, item.get("container") is True))
    return out


def _k8s_tags(value: Any, path: Path) -> tuple[str, ...]:
    """Tags as a JSON array (BTP operator) or comma/newline separated text (hand-made secrets)."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            value = parse_json(stripped, str(path))
        else:
            return tuple(t.strip() for t in re.split(r"[,\n]", stripped) if t.strip())
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ConfigurationError(f"{path} is not an array of strings")
    return tuple(value)


def _data_target(folder: Path) -> str | None:
    """Where the ``..data`` symlink of a Kubernetes secret volume points, or ``None``."""
    try:
        return os.readlink(folder / _DATA_LINK)
    except OSError:
        return None


def _k8s_binding(folder: Path) -> Binding:
    """One servicebinding.io folder, read as one consistent version.

    A Kubernetes secret volume holds its files in a timestamped directory that the ``..data``
    symlink points to, and swaps that symlink atomically on rotation; the visible files are
    symlinks through ``..data``. Reading them one by one during a swap would mix old and new
    credentials (an old client id with a new secret), so the files are read from the
    directory ``..data`` points to, and the read is repeated if ``..data`` moved meanwhile.
    """
    for _ in range(_READ_ATTEMPTS):
        target = _data_target(folder)
        if target is None:
            return _read_k8s_binding(folder, folder)
        try:
            binding = _read_k8s_binding(folder, folder / target)
        except ConfigurationError:
            if _data_target(folder) != target:
                continue  # the old version was removed while we read it
            raise
        if _data_target(folder) == target:
            return binding
    raise ConfigurationError(f"binding folder {folder} kept changing while it was read ({_READ_ATTEMPTS} attempts)")


def _read_k8s_binding(folder: Path, directory: Path) -> Binding:
    """The binding named after ``folder`` from the files in ``directory``."""
    files: dict[str, Path] = {}
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        raise ConfigurationError(f"{directory} cannot be read ({exc.strerror or type(exc).__name__})") from None
    for entry in entries:
        if entry.name.startswith(".") and entry.name != _METADATA_FILE:
            continue  # hidden files and the ..data / ..<timestamp> symlink farm of secret volumes
        if entry.is_file():
            files[entry.name] = entry
    metadata_file = files.pop(_METADATA_FILE, None)
    meta: dict[str, Any] = {}
    credentials: dict[str, Any] = {}
    container_meta: dict[str, Any] = {}
    if metadata_file is not None:
        data = parse_json(_read_text(metadata_file), str(metadata_file))
        if not isinstance(data, dict):
            raise ConfigurationError(f"{metadata_file} is not a JSON object (found {_json_type(data)})")
        for prop in _metadata_properties(data, "metaDataProperties", metadata_file):
            if prop.name in files:
                meta[prop.name] = _read_value(files[prop.name], prop.format)
        for prop in _metadata_properties(data, "credentialProperties", metadata_file):
            path = files.get(prop.name)
            if path is None:
                raise ConfigurationError(f"{folder / prop.name} is listed in {metadata_file} but missing")
            if prop.container:
                value = _read_value(path, "json")
                if not isinstance(value, dict):
                    raise ConfigurationError(
                        f"{path} is not a JSON object (found {_json_type(value)}), but {metadata_file} marks it as container"
                    )
                credentials.update(value)
                container_meta.update({k: v for k, v in value.items() if k in _K8S_METADATA})
            else:
                credentials[prop.name] = _read_value(path, prop.format)
        for name in _K8S_METADATA - meta.keys() - credentials.keys():
            if name in files:  # present but not listed: still the servicebinding.io metadata
                meta[name] = _read_value(files[name], "text")
    else:
        for name, path in files.items():
            if name in _K8S_METADATA:
                meta[name] = _read_value(path, "text")
            else:
                credentials[name] = _read_value(path, "auto")

    label = meta.get("type") or meta.get("label") or container_meta.get("type") or container_meta.get("label")
    if not isinstance(label, str) or not label.strip():
        raise ConfigurationError(f"binding folder {folder} has no 'type' file")
    plan = meta.get("plan") or container_meta.get("plan")
    tags = meta.get("tags", container_meta.get("tags"))
    return Binding(
        name=folder.name,
        label=label.strip(),
        credentials=credentials,
        plan=plan.strip() if isinstance(plan, str) and plan.strip() else None,
        tags=_k8s_tags(tags, folder / "tags") if tags is not None else (),
        source=f"SERVICE_BINDING_ROOT ({folder})",
    )


def _k8s_bindings(root_value: str) -> list[Binding]:
    root = Path(root_value)
    if not root.is_dir():
        raise ConfigurationError(f"SERVICE_BINDING_ROOT={root_value} does not exist or is not a directory")
    return [
        _k8s_binding(entry)
        for entry in sorted(root.iterdir(), key=lambda p: p.name)
        if not entry.name.startswith(".") and entry.is_dir()
    ]


def _k8s_fingerprint(root_value: str) -> tuple[Any, ...]:
    """A cheap summary of ``SERVICE_BINDING_ROOT`` that changes whenever a binding does: each
    secret volume's ``..data`` target (swapped on every update), else each file's inode,
    mtime and size. No file is opened."""
    out: list[Any] = []
    try:
        for folder in sorted(os.scandir(root_value), key=lambda e: e.name):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            target: Any = _data_target(Path(folder.path))
            if target is None:
                stats = [(e.name, os.stat(e.path)) for e in os.scandir(folder.path)]
                target = tuple(sorted((n, st.st_ino, st.st_mtime_ns, st.st_size) for n, st in stats))
            out.append((folder.name, target))
    except OSError:  # something vanished mid-scan: report "changed", the next check settles it
        return ("<changing>", time.monotonic_ns())
    return tuple(out)


@dataclass(frozen=True)
class _Snapshot:
    bindings: tuple[Binding, ...]
    sources: tuple[str, ...]
    generation: int = 0
    fingerprint: tuple[Any, ...] | None = None


# -- the collection --------------------------------------------------------------------------------
class Bindings:
    """All service bindings the app can see, in source order (Cloud Foundry first, then Kubernetes).

    Shared by one engine across threads. ``SERVICE_BINDING_ROOT`` bindings rotate in place
    (Kubernetes swaps ``..data``): at most every ``refresh_interval`` s a lookup checks that
    folder cheaply and, if changed, re-reads it and swaps the new snapshot in at once (old or new
    credentials, never a mix). :meth:`snapshot` pins one version; :attr:`generation` tells parsed
    configs they are stale. ``VCAP_SERVICES`` cannot change and is read once."""

    def __init__(self, bindings: Iterable[Binding] = (), sources: Iterable[str] = ()) -> None:
        self._state = _Snapshot(tuple(bindings), tuple(sources))
        self._static = self._state  # the part that never changes (VCAP_SERVICES)
        self._root: str | None = None  # SERVICE_BINDING_ROOT, re-read on rotation
        self._interval = DEFAULT_REFRESH_INTERVAL
        self._clock: Callable[[], float] = time.monotonic
        self._next_check = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        cwd: str | os.PathLike[str] | None = None,
        refresh_interval: float | None = DEFAULT_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> "Bindings":
        """Read ``VCAP_SERVICES`` (else ``default-env.json``'s) and ``SERVICE_BINDING_ROOT``. An
        empty ``VCAP_SERVICES`` counts as unset. Raises :class:`ConfigurationError` on any malformed
        source (a half-read configuration would fail later, more obscurely).
        ``refresh_interval=None``: no automatic rotation check (``refresh()`` only)."""
        env = os.environ if environ is None else environ
        static: list[Binding] = []
        static_sources: list[str] = []
        vcap = env.get("VCAP_SERVICES")
        if vcap is not None and vcap.strip():
            data = parse_json(vcap, "VCAP_SERVICES")
            static.extend(_vcap_bindings(data, "VCAP_SERVICES", "VCAP_SERVICES"))
            static_sources.append("VCAP_SERVICES")
        else:
            default_env = load_default_env(cwd)
            if default_env is not None and default_env.get("VCAP_SERVICES") is not None:
                source = f"default-env.json ({default_env_path(cwd)})"
                where = f"VCAP_SERVICES in {source}"
                value = default_env["VCAP_SERVICES"]
                if isinstance(value, str):
                    value = parse_json(value, where)
                static.extend(_vcap_bindings(value, where, source))
                static_sources.append(source)
        self = cls(static, static_sources)
        root = env.get("SERVICE_BINDING_ROOT")
        if root is not None and root.strip():
            self._root, self._clock = root, clock
            self._interval = math.inf if refresh_interval is None else max(0.0, refresh_interval)
            fingerprint = _k8s_fingerprint(root)  # taken first: a change during the read shows up next check
            self._state = _Snapshot(*self._read(), 0, fingerprint)
            self._next_check = clock() + self._interval
        return self

    def _read(self) -> tuple[tuple[Binding, ...], tuple[str, ...]]:
        assert self._root is not None
        return (self._static.bindings + tuple(_k8s_bindings(self._root)),
                self._static.sources + (f"SERVICE_BINDING_ROOT ({self._root})",))

    # -- rotation ------------------------------------------------------------------------------
    @property
    def rotates(self) -> bool:
        """Whether these bindings can change (``SERVICE_BINDING_ROOT``): else nothing derived from
        them needs a generation check on the hot path."""
        return self._root is not None

    @property
    def generation(self) -> int:
        """Incremented each time rotated bindings were swapped in."""
        self._maybe_refresh()
        return self._state.generation

    def refresh(self) -> bool:
        """Check ``SERVICE_BINDING_ROOT`` now; ``True`` if a changed set was swapped in. Raises
        :class:`ConfigurationError` for malformed new files (the old snapshot stays in use)."""
        if self._root is None:
            return False
        with self._lock:
            current = self._state
            for _ in range(_READ_ATTEMPTS):
                before = _k8s_fingerprint(self._root)
                if before == current.fingerprint:
                    return False
                bindings, sources = self._read()
                if _k8s_fingerprint(self._root) == before:  # nothing moved while we read: one version
                    self._state = _Snapshot(bindings, sources, current.generation + 1, before)
                    names = [f"{b.label}:{b.name}" for b in bindings]
                    logger.info("service bindings rotated under SERVICE_BINDING_ROOT: %s (generation %d)", names, current.generation + 1)
                    return True
            raise ConfigurationError(f"SERVICE_BINDING_ROOT kept changing while it was read ({_READ_ATTEMPTS} attempts)")

    def _maybe_refresh(self) -> None:
        if self._root is None:
            return
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self._interval  # racing threads are serialised by refresh()
        try:
            self.refresh()
        except ConfigurationError as exc:
            logger.warning("rotated service bindings not taken (keeping the previous ones): %s", exc)

    def snapshot(self) -> "Bindings":
        """The current bindings as a fixed set (same ``generation``) that never changes."""
        self._maybe_refresh()
        pinned = Bindings()
        pinned._state = self._state
        return pinned

    # -- lookups ---------------------------------------------------------------------------------
    def _current(self) -> _Snapshot:
        self._maybe_refresh()
        return self._state

    def __iter__(self) -> Iterator[Binding]:
        return iter(self._current().bindings)

    def __len__(self) -> int:
        return len(self._current().bindings)

    @property
    def sources(self) -> tuple[str, ...]:
        """Human-readable places that were read, for "looked in …" messages."""
        return self._current().sources

    def find_all(self, *, label: str | None = None, name: str | None = None, tag: str | None = None) -> list[Binding]:
        """Every binding matching all given criteria (none given: all bindings)."""
        return [
            b
            for b in self._current().bindings
            if (label is None or b.label == label)
            and (name is None or b.name == name)
            and (tag is None or tag in b.tags)
        ]

    def find(self, *, label: str | None = None, name: str | None = None, tag: str | None = None) -> Binding | None:
        """The first binding matching all given criteria, or ``None``."""
        found = self.find_all(label=label, name=name, tag=tag)
        return found[0] if found else None

    def __repr__(self) -> str:
        state = self._state
        return f"Bindings({[f'{b.label}:{b.name}' for b in state.bindings]!r}, sources={state.sources!r})"
