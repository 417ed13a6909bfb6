"""Where results are kept between runs: the local cache (and, later, a remote one)."""

from __future__ import annotations

from klingflow.cache.local import CACHE_DIR_NAME, Cache, CacheEntry, Claim

__all__ = ["CACHE_DIR_NAME", "Cache", "CacheEntry", "Claim"]
