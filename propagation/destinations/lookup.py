"""Per-call options of a Destination service lookup (DESIGN §5, "Destination service, more"),
and the pure rules that turn them into headers: no I/O here.

* **Selection** (SAP Cloud SDK names): ``subscriberFirst`` (default: the user's tenant's
  destination, else the provider's), ``alwaysProvider``, ``alwaysSubscriber``. Per call
  (``selection=``) or as the default (``PROPAGATION_DESTINATION_SELECTION``).
* **Levels**: ``"name@level"`` (``instance``, ``subaccount``, ``provider_instance``,
  ``provider_subaccount``) is looked up with ``GET …/v2/destinations/{name}@{level}``.
* **Fragments**: ``fragment=`` → ``X-fragment-name`` (``fragment_optional=True`` →
  ``X-fragment-optional: true``); the service merges the fragment's properties over the
  destination's.
* **Client-provided credentials** for the token lookup: ``refresh_token=`` →
  ``X-refresh-token`` (``OAuth2RefreshToken``), ``saml_assertion=`` → ``X-samlAssertion``
  (``OAuth2SAMLBearerAssertion`` with ``SAMLAssertionProvider: ClientProvided``), and
  predefined chains: ``chain=`` → ``X-chain-name``, ``chain_vars={"v": …}`` → ``X-chain-var-v``.

Values that are credentials (refresh token, assertion, chain variables) never appear in a
``repr``, a log line or an exception message; cache keys carry their SHA-256 only.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigurationError, InvalidArgumentError

__all__ = [
    "LookupOptions",
    "SELECTIONS",
    "SELECTION_ENV",
    "DEFAULT_SELECTION",
    "LEVELS",
    "OPTION_NAMES",
    "split_level",
    "selection_from_env",
]

SUBSCRIBER_FIRST = "subscriberFirst"
ALWAYS_PROVIDER = "alwaysProvider"
ALWAYS_SUBSCRIBER = "alwaysSubscriber"
SELECTIONS = (SUBSCRIBER_FIRST, ALWAYS_PROVIDER, ALWAYS_SUBSCRIBER)
DEFAULT_SELECTION = SUBSCRIBER_FIRST
#: Environment variable naming the default selection strategy.
SELECTION_ENV = "PROPAGATION_DESTINATION_SELECTION"
_SELECTIONS = {s.lower(): s for s in SELECTIONS}

#: Levels of the v2 find API (``{name}@{level}``).
LEVELS = ("instance", "subaccount", "provider_instance", "provider_subaccount")

#: The keyword arguments of ``session()``/``client()``/``async_client()``/``headers()`` that
#: shape a Destination service lookup.
OPTION_NAMES = ("selection", "fragment", "fragment_optional", "refresh_token", "saml_assertion", "chain", "chain_vars")

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header-name token
#: What a per-call value may hold to travel in a header: printable ASCII (no CR/LF, no "eu€").
_HEADER_TEXT = re.compile(r"[\x20-\x7e]+")


def _header_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and _HEADER_TEXT.fullmatch(value) is not None


def canonical_selection(value: str, where: str) -> str:
    found = _SELECTIONS.get(str(value).strip().lower())
    if found is None:
        raise ConfigurationError(f"{where}: unknown destination selection {str(value)[:40]!r}; use one of {', '.join(SELECTIONS)}.")
    return found


def selection_from_env(environ: Mapping[str, str]) -> str:
    raw = environ.get(SELECTION_ENV)
    return canonical_selection(raw, SELECTION_ENV) if raw not in (None, "") else DEFAULT_SELECTION


def split_level(name: str) -> tuple[str, str | None]:
    """``"name@level"`` → ``("name", "level")``; a name without ``@`` → ``(name, None)``.
    An unknown level is a :class:`ConfigurationError` (destination names contain no ``@``)."""
    base, sep, level = name.rpartition("@")
    if not sep:
        return name, None
    if level not in LEVELS or not base:
        raise InvalidArgumentError(
            f"Destination '{name}': '@{level[:40]}' is not a level of the Destination service; "
            f"use name@{' | name@'.join(LEVELS)}."
        )
    return base, level


def _sha(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True, repr=False)
class LookupOptions:
    """What one call asks of the Destination service beyond the name (see the module doc)."""

    selection: str | None = None
    fragment: str | None = None
    fragment_optional: bool = False
    refresh_token: str | None = None
    saml_assertion: str | None = None
    chain: str | None = None
    chain_vars: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, **options: Any) -> "LookupOptions | None":
        """Validated options from keyword arguments (``None`` when none is set); an unknown
        keyword is a ``TypeError``, as for any function."""
        if not options:  # the common call: no option at all
            return None
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; lookup options are {', '.join(OPTION_NAMES)}")
        if all(options.get(k) in (None, False, {}, ()) for k in OPTION_NAMES):
            return None
        # Every value below travels in a header of a Destination-service lookup: checked here,
        # before any request, so a bad argument never reaches a transport (whose error would
        # quote it) nor counts as a failure of the service (InvalidArgumentError, no breaker).
        where = "Destination lookup option"
        selection = options.get("selection")
        if selection is not None:
            try:
                selection = canonical_selection(selection, f"{where} selection=")
            except ConfigurationError as exc:
                raise InvalidArgumentError(str(exc)) from None
        fragment = options.get("fragment")
        if fragment is not None and not _header_text(fragment):
            raise InvalidArgumentError(
                f"{where} fragment= must be a fragment name of printable ASCII characters (it is sent in the "
                f"X-fragment-name header): no line break, control or non-ASCII character. Nothing was sent.")
        if options.get("fragment_optional") and fragment is None:
            raise InvalidArgumentError(f"{where} fragment_optional=True needs fragment=.")
        for secret in ("refresh_token", "saml_assertion"):
            value = options.get(secret)
            if value is not None and not _header_text(value):
                raise InvalidArgumentError(f"{where} {secret}= must be a non-empty single-line string of printable ASCII "
                                           f"characters (it is sent in a header). Nothing was sent.")
        chain = options.get("chain")
        if chain is not None and (not isinstance(chain, str) or not _TOKEN.match(chain)):
            raise InvalidArgumentError(f"{where} chain= must be a predefined chain's name.")
        raw_vars = options.get("chain_vars") or {}
        if raw_vars and chain is None:
            raise InvalidArgumentError(f"{where} chain_vars= needs chain= (the service ignores them otherwise).")
        if not isinstance(raw_vars, Mapping):
            raise InvalidArgumentError(f"{where} chain_vars= must be a mapping of variable names to strings.")
        chain_vars: list[tuple[str, str]] = []
        for key, value in dict(raw_vars).items():
            if not isinstance(key, str) or not _TOKEN.match(key):
                raise InvalidArgumentError(f"{where} chain_vars: a variable name must be an HTTP header token "
                                           f"(letters, digits, -_.).")
            if not _header_text(value):
                raise InvalidArgumentError(f"{where} chain_vars: {key[:40]!r} needs a single-line string value of "
                                           f"printable ASCII characters (it is sent in a header). Nothing was sent.")
            chain_vars.append((key, value))
        return cls(
            selection=selection,
            fragment=fragment.strip() if fragment else None,
            fragment_optional=bool(options.get("fragment_optional")),
            refresh_token=options.get("refresh_token"),
            saml_assertion=options.get("saml_assertion"),
            chain=chain,
            chain_vars=tuple(sorted(chain_vars)),
        )

    # -- headers ---------------------------------------------------------------------------
    def fragment_headers(self) -> dict[str, str]:
        """``X-fragment-*``: sent on every lookup (the merged configuration decides the type)."""
        if self.fragment is None:
            return {}
        headers = {"X-fragment-name": self.fragment}
        if self.fragment_optional:
            headers["X-fragment-optional"] = "true"
        return headers

    def chain_headers(self) -> dict[str, str]:
        if self.chain is None:
            return {}
        return {"X-chain-name": self.chain, **{f"X-chain-var-{k}": v for k, v in self.chain_vars}}

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values to scrub from anything the service answers."""
        return tuple(v for v in (self.refresh_token, self.saml_assertion, *(v for _, v in self.chain_vars)) if v)

    def chain_digest(self) -> str:
        return _sha(self.chain, self.chain_vars) if self.chain else ""

    def __repr__(self) -> str:
        shown = [f"selection={self.selection!r}"] if self.selection else []
        if self.fragment:
            shown.append(f"fragment={self.fragment!r}{' (optional)' if self.fragment_optional else ''}")
        for name in ("refresh_token", "saml_assertion"):
            if getattr(self, name):
                shown.append(f"{name}=<set>")
        if self.chain:
            shown.append(f"chain={self.chain!r}, chain_vars={[k for k, _ in self.chain_vars]!r}")
        return f"LookupOptions({', '.join(shown)})"


NO_OPTIONS = LookupOptions()


def digest(*parts: Any) -> str:
    """SHA-256 of ``parts`` (for cache keys: never a raw credential)."""
    return _sha(*parts)
