"""Service bindings: ``VCAP_SERVICES`` (Cloud Foundry, read with ``cfenv``), Kubernetes /
Kyma bindings under ``SERVICE_BINDING_ROOT`` (a folder per binding, a file per credential
key), and ``default-env.json`` in the working directory for local runs.

Every malformed input raises :class:`~propagation.errors.ConfigurationError` naming the
variable, file or JSON path at fault, never a credential value: a broken binding should be
fixed in minutes, not debugged for hours, and the message may end up in a log.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import cfenv

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


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages that must not show the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


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


def _k8s_binding(folder: Path) -> Binding:
    """One servicebinding.io folder. ``..data`` indirection is followed by reading the visible files."""
    files: dict[str, Path] = {}
    for entry in folder.iterdir():
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


# -- the collection --------------------------------------------------------------------------------
class Bindings:
    """All service bindings the app can see, in source order (Cloud Foundry first, then Kubernetes).

    Immutable after construction so that one engine can share it across threads.
    """

    def __init__(self, bindings: Iterable[Binding] = (), sources: Iterable[str] = ()) -> None:
        self._bindings: tuple[Binding, ...] = tuple(bindings)
        self._sources: tuple[str, ...] = tuple(sources)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        cwd: str | os.PathLike[str] | None = None,
    ) -> "Bindings":
        """Read ``VCAP_SERVICES`` (else ``default-env.json``'s) and ``SERVICE_BINDING_ROOT``.

        An empty ``VCAP_SERVICES`` counts as unset. Raises :class:`ConfigurationError` on any
        malformed source: a half-read configuration would fail later and more obscurely.
        """
        env = os.environ if environ is None else environ
        bindings: list[Binding] = []
        sources: list[str] = []
        vcap = env.get("VCAP_SERVICES")
        if vcap is not None and vcap.strip():
            data = parse_json(vcap, "VCAP_SERVICES")
            bindings.extend(_vcap_bindings(data, "VCAP_SERVICES", "VCAP_SERVICES"))
            sources.append("VCAP_SERVICES")
        else:
            default_env = load_default_env(cwd)
            if default_env is not None and default_env.get("VCAP_SERVICES") is not None:
                source = f"default-env.json ({default_env_path(cwd)})"
                where = f"VCAP_SERVICES in {source}"
                value = default_env["VCAP_SERVICES"]
                if isinstance(value, str):
                    value = parse_json(value, where)
                bindings.extend(_vcap_bindings(value, where, source))
                sources.append(source)
        root = env.get("SERVICE_BINDING_ROOT")
        if root is not None and root.strip():
            bindings.extend(_k8s_bindings(root))
            sources.append(f"SERVICE_BINDING_ROOT ({root})")
        return cls(bindings, sources)

    def __iter__(self) -> Iterator[Binding]:
        return iter(self._bindings)

    def __len__(self) -> int:
        return len(self._bindings)

    @property
    def sources(self) -> tuple[str, ...]:
        """Human-readable places that were read, for "looked in …" messages."""
        return self._sources

    def find_all(self, *, label: str | None = None, name: str | None = None, tag: str | None = None) -> list[Binding]:
        """Every binding matching all given criteria (none given: all bindings)."""
        return [
            b
            for b in self._bindings
            if (label is None or b.label == label)
            and (name is None or b.name == name)
            and (tag is None or tag in b.tags)
        ]

    def find(self, *, label: str | None = None, name: str | None = None, tag: str | None = None) -> Binding | None:
        """The first binding matching all given criteria, or ``None``."""
        found = self.find_all(label=label, name=name, tag=tag)
        return found[0] if found else None

    def __repr__(self) -> str:
        return f"Bindings({[f'{b.label}:{b.name}' for b in self._bindings]!r}, sources={self._sources!r})"
