"""Bench (g): SAP's ``sap-cloud-sdk`` for Python calling one destination as the user, N times —
``get_destination`` (v2 consume API with the user token; the Destination service runs the
token flow) then a GET with ``DestinationHttpClient``, per call, as its user guide shows.
Runs inside the venv with the pinned SDK. stdin: ``{"destination", "path", "user_token",
"warmup", "n"}``; stdout: one JSON line ``{calls, seconds, statuses}``; never a token."""

from __future__ import annotations

import json
import os
import sys
import time

from sap_cloud_sdk.destination import ConsumptionOptions, DestinationConfig, DestinationHttpClient, create_client


def main() -> None:
    case = json.load(sys.stdin)
    creds = json.loads(os.environ["VCAP_SERVICES"])["destination"][0]["credentials"]
    config = DestinationConfig(url=creds["uri"], token_url=creds["url"].rstrip("/") + "/oauth/token",
                               client_id=creds["clientid"], client_secret=creds["clientsecret"],
                               identityzone=creds["identityzone"])
    client = create_client(config=config)
    options = ConsumptionOptions(user_token=case["user_token"])
    statuses: dict[str, int] = {}

    def one() -> None:
        destination = client.get_destination(case["destination"], options=options)
        with DestinationHttpClient(destination) as http:
            status = http.request("GET", case["path"]).status_code
        statuses[str(status)] = statuses.get(str(status), 0) + 1

    for _ in range(case["warmup"]):
        one()
    started = time.perf_counter()
    for _ in range(case["n"]):
        one()
    print(json.dumps({"calls": case["n"], "seconds": time.perf_counter() - started, "statuses": statuses}))


if __name__ == "__main__":
    main()
