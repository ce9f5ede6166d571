// Bench (g): the SAP Cloud SDK for JavaScript calling one destination as the user, N times.
// Usage: node sdk_js_loop.js DESTINATION PATH WARMUP N   (the user JWT in $BENCH_JWT, never in argv)
// Prints one JSON line: {calls, seconds, statuses}. Destination cache on (useCache), as an app would run it.
'use strict';
const { executeHttpRequest } = require('@sap-cloud-sdk/http-client');

const [destinationName, url, warmup, n] = process.argv.slice(2);
const jwt = process.env.BENCH_JWT;

(async () => {
  const statuses = {};
  const one = async () => {
    const r = await executeHttpRequest({ destinationName, jwt, useCache: true }, { method: 'get', url });
    statuses[r.status] = (statuses[r.status] || 0) + 1;
  };
  for (let i = 0; i < Number(warmup); i++) await one();
  const started = process.hrtime.bigint();
  for (let i = 0; i < Number(n); i++) await one();
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(JSON.stringify({ calls: Number(n), seconds, statuses }));
})().catch((e) => { console.log(JSON.stringify({ error: String(e.message).slice(0, 300) })); process.exit(1); });
