"""A FastAPI service on SAP BTP: functional locations from an on-premise S/4HANA (OData
V2) and maintenance orders to a Cloud Integration iFlow, both as the calling user, from
``async`` routes that never block the event loop.

* ``Propagation(app, public_paths=["/health"])`` validates every caller's JWT (XSUAA) and
  reads the bindings in the lifespan startup: a missing one stops the server with the reason;
* ``Depends(require_scopes("Read"))`` checks the app's XSUAA local scope ``<xsappname>.Read``
  (403 ``insufficient_scope`` otherwise); ``/docs`` has an "Authorize" button for the bearer;
* the routes call ``propagation.async_client(NAME)`` (``httpx.AsyncClient``): token
  exchanges and Destination-service lookups are awaited, S/4HANA is reached through the
  Connectivity proxy with the user (principal propagation), the iFlow with a jwt-bearer
  token for the user.

Bindings: ``xsuaa``, ``connectivity`` (+ ``destination`` for cockpit destinations) and the
``it-rt`` instance named by ``IFLOW_DESTINATION`` (default ``order-iflow``). Destination
``S4_DESTINATION`` (default ``S4``): OnPremise, PrincipalPropagation. See README.md.

Run on Cloud Foundry with ``uvicorn app:app`` (manifest.yml); locally against the emulated
landscape with
``python -m propagation.sandbox exec -- python examples/fastapi_odata/app.py``.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

import propagation
from propagation.fastapi import CurrentUser, Propagation, require_scopes

DESTINATION = os.environ.get("S4_DESTINATION", "S4")
IFLOW_DESTINATION = os.environ.get("IFLOW_DESTINATION", "order-iflow")
IFLOW_PATH = os.environ.get("IFLOW_PATH", "/http/maintenance-orders")
ENTITY_SET = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION_SRV/A_FunctionalLocation"
log = logging.getLogger("fastapi_odata")

app = FastAPI(title="Functional locations as the user")
Propagation(app, public_paths=["/health"])  # every other path needs a valid JWT


class FunctionalLocation(BaseModel):
    FunctionalLocation: str
    FunctionalLocationName: str | None = None
    FunctionalLocationCategory: str | None = None


class MaintenanceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")  # anything else is refused (422), never forwarded

    FunctionalLocation: str
    Description: str | None = None


class BackendError(Exception):
    def __init__(self, what: str, status: int) -> None:
        super().__init__(f"{what} answered {status}")
        self.what, self.status = what, status


# -- routes ------------------------------------------------------------------------------
@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "UP"}


@app.get("/me")
async def me(user: CurrentUser) -> dict[str, Any]:
    return {"user": user.user, "tenant": user.tenant, "kind": user.kind}


@app.get("/functional-locations", dependencies=[Depends(require_scopes("Read"))])
async def functional_locations(top: Annotated[int, Query(alias="$top", ge=1, le=500)] = 50) -> list[FunctionalLocation]:
    async with propagation.async_client(DESTINATION) as s4:  # as the user of this request
        r = await s4.get(ENTITY_SET, params={"$top": top}, headers={"Accept": "application/json"})
    if r.is_error:
        raise BackendError("S/4HANA", r.status_code)
    return [FunctionalLocation.model_validate(row) for row in r.json()["d"]["results"]]


@app.post("/maintenance-orders", status_code=202, dependencies=[Depends(require_scopes("Order"))])
async def maintenance_orders(order: MaintenanceOrder) -> dict[str, Any]:
    async with propagation.async_client(IFLOW_DESTINATION) as iflow:
        r = await iflow.post(IFLOW_PATH, json=order.model_dump(exclude_none=True))
    if r.is_error:
        raise BackendError("the iFlow", r.status_code)
    return {"status": "accepted", "seenBy": r.json().get("seenBy")}


# -- errors: a safe message each, never a token ------------------------------------------
def _error(status: int, code: str, description: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "error_description": description, **extra}, status_code=status)


@app.exception_handler(propagation.MissingUserTokenError)
async def missing_user(request: Request, exc: propagation.MissingUserTokenError) -> JSONResponse:
    return _error(401, "unauthorized", str(exc))  # nothing was sent, no technical user instead


@app.exception_handler(propagation.TokenExchangeError)
async def exchange_failed(request: Request, exc: propagation.TokenExchangeError) -> JSONResponse:
    return _error(502, "bad_gateway", exc.error_description or "token exchange refused", idp_error=exc.error)


@app.exception_handler(propagation.ConfigurationError)
@app.exception_handler(propagation.DestinationNotFoundError)
async def misconfigured(request: Request, exc: propagation.PropagationError) -> JSONResponse:
    log.error("destination misconfigured: %s", exc)  # library messages hold no secrets
    return _error(500, "server_error", "The backend connection is not configured; see the log.")


@app.exception_handler(BackendError)
async def backend_failed(request: Request, exc: BackendError) -> JSONResponse:
    return _error(502, "backend_error", str(exc), backend_status=exc.status)


@app.exception_handler(httpx.TransportError)
async def unreachable(request: Request, exc: httpx.TransportError) -> JSONResponse:
    log.warning("backend unreachable: %s", type(exc).__name__)
    return _error(502, "backend_unreachable", "The backend could not be reached.")


if __name__ == "__main__":  # local runs only (the sandbox, a laptop): loopback
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), log_level="info")
