// Preload (node -r) for hosts whose resolver does not map *.localhost to loopback (glibc with
// "hosts: files dns"): resolves every <label>.localhost to 127.0.0.1, as systemd-resolved,
// macOS and browsers do, so the sandbox's tenant hosts (https://acme.localhost:P) are reachable.
'use strict';
const dns = require('dns');
const orig = dns.lookup;
dns.lookup = function (host, options, cb) {
  if (typeof options === 'function') { cb = options; options = {}; }
  if (/\.localhost$/i.test(host)) {
    if (options && options.all) return process.nextTick(cb, null, [{ address: '127.0.0.1', family: 4 }]);
    return process.nextTick(cb, null, '127.0.0.1', 4);
  }
  return orig.call(dns, host, options, cb);
};
