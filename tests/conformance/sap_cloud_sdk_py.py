"""One lookup (and call) with SAP's ``sap-cloud-sdk`` for Python against the sandbox; run
inside the venv that has the pinned SDK. Input: one JSON object on stdin —
``{"destination", "user_token"?, "level"?, "fragment"?, "fragment_optional"?, "skip_token_retrieval"?,
"call"?}``. Output: one JSON line ``{"found", "authentication", "url", "fragment_name",
"auth_tokens", "status", "seenBy"}`` or ``{"error"}``; never a token."""

from __future__ import annotations

import json
import os
import sys

from sap_cloud_sdk.destination import (
    ConsumptionLevel,
    ConsumptionOptions,
    DestinationConfig,
    DestinationHttpClient,
    create_client,
)

FL_PATH = "/sap/opu/odata/sap/API_FUNCTIONALLOCATION/FunctionalLocation"


def main() -> None:
    case = json.load(sys.stdin)
    creds = json.loads(os.environ["VCAP_SERVICES"])["destination"][0]["credentials"]
    config = DestinationConfig(url=creds["uri"], token_url=creds["url"].rstrip("/") + "/oauth/token",
                               client_id=creds["clientid"], client_secret=creds["clientsecret"],
                               identityzone=creds["identityzone"])
    client = create_client(config=config)
    options = ConsumptionOptions(
        user_token=case.get("user_token"), fragment_name=case.get("fragment"),
        fragment_optional=case.get("fragment_optional"), skip_token_retrieval=case.get("skip_token_retrieval", False),
    )
    level = ConsumptionLevel(case["level"]) if case.get("level") else None
    try:
        destination = client.get_destination(case["destination"], level=level, options=options)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)[:300]}))
        return
    if destination is None:
        print(json.dumps({"found": False}))
        return
    out = {"found": True, "authentication": getattr(destination.authentication, "value", str(destination.authentication)),
           "url": destination.url, "fragment_name": (destination.properties or {}).get("FragmentName"),
           "auth_tokens": len(destination.auth_tokens or [])}
    if case.get("call"):
        with DestinationHttpClient(destination) as http:
            response = http.request("GET", FL_PATH)
        body = response.json() if response.content else {}
        out.update(status=response.status_code, seenBy=body.get("seenBy"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
