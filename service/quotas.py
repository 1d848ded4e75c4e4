"""Quotas per API key (``SERVE_KEY_QUOTAS``): requests per second (a token bucket) and requests at once.

The engine keeps the counts, so the limits hold for the whole server, however many front-ends share the
port and whichever a client's connections reach. A front-end sends the engine a digest of the request's key,
never the key; the engine refuses a request over its key's limits before it decodes or queues anything,
and the front-end answers 429 with ``Retry-After``. A request with several generations (a multi-prompt
completion) counts each. Without quotas configured, nothing is counted.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from service.outcomes import QuotaExceeded
from service.settings import KeyQuota, Settings

EVERY_KEY = "*"


def key_digest(key: str) -> str:
    """What identifies a key between processes and in the engine's memory: not the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


@dataclass
class _Bucket:
    quota: KeyQuota
    tokens: float
    updated: float
    running: int = 0


class Quotas:
    def __init__(self, settings: Settings) -> None:
        self._quotas = {key_digest(key) if key != EVERY_KEY else EVERY_KEY: quota
                        for key, quota in settings.key_quotas.items()}
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._quotas)

    def _bucket(self, digest: str) -> _Bucket | None:
        bucket = self._buckets.get(digest)
        if bucket is None:
            quota = self._quotas.get(digest) or self._quotas.get(EVERY_KEY)
            if quota is None:
                return None
            bucket = self._buckets[digest] = _Bucket(quota, float(quota.burst_size), time.monotonic())
        return bucket

    def acquire(self, digest: str) -> bool:
        """Count a request of the key; raises QuotaExceeded if it is over a limit. True if it must be released."""
        bucket = self._bucket(digest) if digest else None
        if bucket is None:
            return False
        quota = bucket.quota
        if quota.concurrent is not None and bucket.running >= quota.concurrent:
            raise QuotaExceeded(f"this API key has {bucket.running} requests running, its limit", 1)
        if quota.requests_per_s is not None:
            now = time.monotonic()
            bucket.tokens = min(quota.burst_size, bucket.tokens + (now - bucket.updated) * quota.requests_per_s)
            bucket.updated = now
            if bucket.tokens < 1:
                wait = (1 - bucket.tokens) / quota.requests_per_s
                raise QuotaExceeded(f"this API key is over its limit of {quota.requests_per_s:g} requests per "
                                    "second", max(1, math.ceil(wait)))
            bucket.tokens -= 1
        bucket.running += 1
        return True

    def release(self, digest: str) -> None:
        bucket = self._buckets.get(digest)
        if bucket is not None:
            bucket.running -= 1
