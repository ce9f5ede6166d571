"""pytest plugin of :mod:`propagation.testing` (entry point ``pytest11``).

Opt-in fixtures only — nothing autouse, no network blocking — and nothing heavy imported
here: pytest loads this module in every run of every project with ``propagation``
installed, so ``responses``, ``respx``, PyJWT and the model are imported only when a test
asks for a fixture.

* ``btp_landscape`` — the :class:`~propagation.testing.Landscape` of a running in-process
  emulation (bindings in the environment, ``requests``/``httpx`` to its hosts answered by it,
  the default engine of ``propagation`` reset before and after the test).
* ``btp_emulation`` — the same emulation with its ``responses`` and ``respx`` mocks
  (``btp_emulation.responses.add(...)`` for routes of your own).

Configure with the marker ``@pytest.mark.btp_landscape("S4 OnPremise PrincipalPropagation",
tenants=("provider", "acme"))``: positional arguments are destination lines, keyword
arguments go to :class:`~propagation.testing.Landscape`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import pytest

if TYPE_CHECKING:
    from ._transport import Emulation
    from .landscape import Landscape

MARKER = "btp_landscape"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*destinations, **options): destination lines and Landscape options for the "
        "btp_landscape / btp_emulation fixtures of propagation.testing",
    )


@pytest.fixture
def btp_emulation(request: pytest.FixtureRequest) -> Iterator["Emulation"]:
    """A running in-process BTP landscape; restored (environment, engine, mocks) afterwards."""
    from ._transport import emulate

    marker = request.node.get_closest_marker(MARKER)
    args: tuple[Any, ...] = marker.args if marker is not None else ()
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    with emulate(*args, **kwargs) as emulation:
        yield emulation


@pytest.fixture
def btp_landscape(btp_emulation: "Emulation") -> "Landscape":
    """The emulated landscape: ``.destination(line)``, ``.user_token(user, ...)``,
    ``.exchanges``, ``.calls``."""
    return btp_emulation.landscape
