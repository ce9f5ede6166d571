"""Options of the opt-in IAS flows (IAS→XSUAA, public clients): arguments, else environment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..errors import ConfigurationError

__all__ = ["IasFlowOptions", "ENV_IAS_TO_XSUAA", "ENV_XSUAA_TRUST_CLIENT_ID", "ENV_PUBLIC_CLIENTS"]

#: Environment variables read when the corresponding option is not given.
ENV_IAS_TO_XSUAA = "PROPAGATION_IAS_TO_XSUAA"
ENV_XSUAA_TRUST_CLIENT_ID = "PROPAGATION_XSUAA_TRUST_CLIENT_ID"
ENV_PUBLIC_CLIENTS = "PROPAGATION_PUBLIC_CLIENTS"


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be a boolean (true/false), not {str(value)[:40]!r}.")


def _client_ids(value: Any, name: str) -> frozenset[str]:
    if isinstance(value, str):
        items = value.split(",")
    else:
        try:
            items = list(value)
        except TypeError:
            raise ConfigurationError(f"{name} must be a list of client ids or a comma-separated string.") from None
    ids = set()
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError(f"{name} must contain client ids (strings), not {type(item).__name__}.")
        if item.strip():
            ids.add(item.strip())
    return frozenset(ids)


@dataclass(frozen=True)
class IasFlowOptions:
    """The opt-in IAS flows. Each option: explicit value, else its environment variable.

    * ``ias_to_xsuaa`` (``PROPAGATION_IAS_TO_XSUAA``): exchange every IAS token for an XSUAA token.
    * ``xsuaa_trust_client_id`` (``PROPAGATION_XSUAA_TRUST_CLIENT_ID``): the IAS client id of the
      subaccount's XSUAA trust, which ``xsuaa-cross-consumption`` puts into ``aud``. Not in any
      binding (the XSUAA binding's ``clientid`` is another client). Unset: the exchange is tried
      whenever ``aud`` names anything besides the IAS binding's own client id, and an XSUAA
      refusal is reported as the missing ``aud`` entry.
    * ``public_clients`` (``PROPAGATION_PUBLIC_CLIENTS``, comma-separated): IAS public (PKCE)
      client ids whose tokens are exchanged at IAS for this app's token.
    """

    ias_to_xsuaa: bool = False
    xsuaa_trust_client_id: str | None = None
    public_clients: frozenset[str] = frozenset()

    @property
    def enabled(self) -> bool:
        return self.ias_to_xsuaa or bool(self.public_clients)

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str],
        *,
        ias_to_xsuaa: bool | str | None = None,
        xsuaa_trust_client_id: str | None = None,
        public_clients: Iterable[str] | str | None = None,
    ) -> "IasFlowOptions":
        """Options from the arguments, falling back to ``environ``; raises ``ConfigurationError``."""
        hybrid = _flag(ias_to_xsuaa if ias_to_xsuaa is not None else environ.get(ENV_IAS_TO_XSUAA, ""),
                       "ias_to_xsuaa" if ias_to_xsuaa is not None else ENV_IAS_TO_XSUAA)
        trust = xsuaa_trust_client_id if xsuaa_trust_client_id is not None else environ.get(ENV_XSUAA_TRUST_CLIENT_ID)
        if trust is not None and not isinstance(trust, str):
            raise ConfigurationError("xsuaa_trust_client_id must be a string.")
        clients = _client_ids(public_clients if public_clients is not None else environ.get(ENV_PUBLIC_CLIENTS, ""),
                              "public_clients" if public_clients is not None else ENV_PUBLIC_CLIENTS)
        return cls(hybrid, (trust or "").strip() or None, clients)

