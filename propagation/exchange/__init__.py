"""The token client: OAuth token requests written once as flows (:mod:`.flow`) and performed by a
sync and an async executor, with deadlines and breakers (:mod:`.resilience`), the tenant's token
URLs (:mod:`.tenant_urls`), and what protects them from peers and callers (:mod:`.redaction`,
:mod:`.peer_json`, :mod:`.http_headers`)."""
