// One call with the SAP Cloud SDK for JavaScript (executeHttpRequest) against the sandbox.
// Usage: node cloud_sdk_js.js DESTINATION PATH   (the user JWT in $CONFORMANCE_JWT, never in argv;
// or $CONFORMANCE_ISS: an issuer URL that names the tenant)
// Prints one JSON line: {status, seenBy, service, carriedBy, tenant} or {error, status, message}.
// The bindings come from the environment (VCAP_SERVICES, destinations), as on Cloud Foundry.
'use strict';
const { executeHttpRequest } = require('@sap-cloud-sdk/http-client');

const [destinationName, url] = process.argv.slice(2);
const jwt = process.env.CONFORMANCE_JWT || undefined;
const iss = process.env.CONFORMANCE_ISS || undefined;  // tenant selection by issuer URL instead of a JWT

(async () => {
  try {
    const response = await executeHttpRequest({ destinationName, ...(jwt ? { jwt } : {}), ...(iss ? { iss } : {}) },
      { method: 'get', url });
    const d = response.data || {};
    console.log(JSON.stringify({ status: response.status, seenBy: d.seenBy ?? null, service: d.service ?? null,
      carriedBy: d.carriedBy ?? null, tenant: d.tenant ?? null }));
  } catch (e) {
    const data = e.response && e.response.data;
    const message = data && data.error && (data.error.message || data.error);
    // e.message may quote a URL, never a token; the SDK's root cause names what went wrong.
    console.log(JSON.stringify({ error: true, status: e.response ? e.response.status : null,
      message: typeof message === 'string' ? message : null, reason: String(e.message).slice(0, 300),
      cause: e.cause ? String(e.cause.message).slice(0, 300) : null }));
  }
})();
