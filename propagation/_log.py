"""The library's logger. Log fingerprints, never tokens or secrets."""

from __future__ import annotations

import logging

logger = logging.getLogger("propagation")
