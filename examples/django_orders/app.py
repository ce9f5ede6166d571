"""A Django API on SAP BTP: functional locations from an on-premise S/4HANA and
maintenance orders to a Cloud Integration iFlow, both as the calling user.

One file (settings, URLs, views) so it reads in one sitting; split it into a project the
usual way when it grows. What it shows:

* ``propagation.django.PropagationMiddleware`` in ``MIDDLEWARE`` validates every caller's
  JWT (XSUAA) — 401 JSON for a missing or bad token, ``/health`` public;
* ``@require_scopes("Read")`` / ``@require_scopes("Order")`` check the app's XSUAA local
  scopes (``<xsappname>.Read``) — 403 ``insufficient_scope`` otherwise;
* the views call ``propagation.session(NAME)``: S/4HANA on premise through the
  Connectivity proxy (principal propagation), the iFlow with a jwt-bearer token for the
  user. No view handles a token.

Bindings: ``xsuaa``, ``connectivity`` (+ ``destination`` for cockpit destinations) and the
Cloud Integration ``it-rt`` instance named by ``IFLOW_DESTINATION`` (default
``order-iflow``). Destination ``S4_DESTINATION`` (default ``S4``): OnPremise,
PrincipalPropagation. See README.md next to this file.

Run on Cloud Foundry with ``gunicorn app:application`` (manifest.yml); locally against the
emulated landscape with
``python -m propagation.sandbox exec -- python examples/django_orders/app.py``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import django
import requests
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "not-used-no-sessions-no-csrf-cookies"),
    ALLOWED_HOSTS=["*"],  # behind the CF router / the approuter; no Host-based logic here
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["propagation.django.PropagationMiddleware"],  # before anything that reads the user
    INSTALLED_APPS=["propagation.django.PropagationConfig"],  # `check` reports a missing binding
    PROPAGATION={"PUBLIC_PATHS": ["/health"]},
    LOGGING={"version": 1, "disable_existing_loggers": False,
             "handlers": {"console": {"class": "logging.StreamHandler"}},
             "root": {"handlers": ["console"], "level": "INFO"}},
)
django.setup()

from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.http import require_GET, require_POST  # noqa: E402

import propagation  # noqa: E402
from propagation.django import require_scopes  # noqa: E402

DESTINATION = os.environ.get("S4_DESTINATION", "S4")
IFLOW_DESTINATION = os.environ.get("IFLOW_DESTINATION", "order-iflow")
IFLOW_PATH = os.environ.get("IFLOW_PATH", "/http/maintenance-orders")
ENTITY_SET = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION_SRV/A_FunctionalLocation"
MAX_TOP = 500
ORDER_FIELDS = frozenset({"FunctionalLocation", "Description"})


def error(status: int, code: str, description: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": code, "error_description": description, **extra}, status=status)


def outbound_errors(view: Any) -> Any:
    """One safe answer per library error (their messages hold no secret, never a token)."""
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        try:
            return view(request, *args, **kwargs)
        except propagation.MissingUserTokenError as exc:  # nothing was sent, no technical user instead
            return error(401, "unauthorized", str(exc))
        except propagation.TokenExchangeError as exc:
            return error(502, "bad_gateway", exc.error_description or "token exchange refused", idp_error=exc.error)
        except (propagation.ConfigurationError, propagation.DestinationNotFoundError) as exc:
            print(f"destination misconfigured: {exc}", file=sys.stderr)
            return error(500, "server_error", "The backend connection is not configured; see the log.")
        except requests.RequestException as exc:
            print(f"backend unreachable: {type(exc).__name__}", file=sys.stderr)
            return error(502, "backend_unreachable", "The backend could not be reached.")
    wrapped.__name__ = view.__name__
    return wrapped


# -- views ------------------------------------------------------------------------------
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "UP"})


@require_GET
def me(request: HttpRequest) -> JsonResponse:
    user = propagation.current_token()
    assert user is not None  # the middleware let the request in
    prefix = f"{settings_xsappname()}."
    scopes = [s[len(prefix):] for s in user.claims.get("scope", []) if isinstance(s, str) and s.startswith(prefix)]
    return JsonResponse({"user": user.user, "tenant": user.tenant, "scopes": sorted(scopes)})


@require_GET
@require_scopes("Read")
@outbound_errors
def functional_locations(request: HttpRequest) -> JsonResponse:
    try:
        top = max(1, min(int(request.GET.get("$top", 50)), MAX_TOP))
    except ValueError:
        return error(400, "bad_request", "$top must be an integer")
    s4 = propagation.session(DESTINATION)  # as the user of this request; pooled, cheap per request
    r = s4.get(ENTITY_SET, params={"$top": top}, headers={"Accept": "application/json"})
    if not r.ok:
        return error(502, "backend_error", f"S/4HANA answered {r.status_code}", backend_status=r.status_code)
    return JsonResponse(r.json()["d"]["results"], safe=False)


@require_POST
@require_scopes("Order")
@outbound_errors
def maintenance_orders(request: HttpRequest) -> JsonResponse:
    try:
        order = json.loads(request.body or b"null")
    except ValueError:
        return error(400, "bad_request", "expected a JSON object")
    if not isinstance(order, dict) or not order or set(order) - ORDER_FIELDS:
        return error(400, "bad_request", f"expected a JSON object with only {', '.join(sorted(ORDER_FIELDS))}")
    r = propagation.session(IFLOW_DESTINATION).post(IFLOW_PATH, json=order)
    if not r.ok:
        return error(502, "iflow_error", f"the iFlow answered {r.status_code}", iflow_status=r.status_code)
    answer = r.json()
    return JsonResponse({"status": "accepted", "seenBy": answer.get("seenBy")}, status=202)


def settings_xsappname() -> str:
    """The app's xsappname as XSUAA issued it (with its ``!t…`` suffix): the prefix of its scopes."""
    xsuaa = propagation.default_propagator().bindings.find(label="xsuaa")
    return str(xsuaa.credentials.get("xsappname", "")) if xsuaa is not None else ""


urlpatterns = [
    path("health", health),
    path("me", me),
    path("functional-locations", functional_locations),
    path("maintenance-orders", maintenance_orders),
]

# The WSGI application (gunicorn app:application). Building it loads the middleware, which
# reads the bindings: a missing one stops the start here, with the reason.
from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()

if __name__ == "__main__":  # local runs only (the sandbox, a laptop): loopback, no autoreload
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args: Any) -> None:  # one line per request, without headers
            print(f"{self.command} {self.path.split('?')[0]} {args[0] if args else ''}", file=sys.stderr)

    with make_server("127.0.0.1", int(os.environ.get("PORT", "8000")), application, handler_class=QuietHandler) as server:
        print(f"django_orders on http://127.0.0.1:{server.server_port}", file=sys.stderr, flush=True)
        server.serve_forever()
