"""Exchanged-token caches: in memory (:mod:`.memory`), shared in Redis or a Redis Cluster
(:mod:`.redis`), and the sealing of shared values (:mod:`.sealing`). Keys are hashes; a cached
token is only ever used for the same user, destination, tenant and client (DESIGN §6)."""
