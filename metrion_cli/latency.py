"""Latency histograms: what the dashboard's percentiles are computed from.

Percentiles over the raw log cost a sort of every row in range (seconds on a million rows), so
the writer also counts each forwarded request into a bucket per (day, provider, model), in the
same transaction as the rows. Buckets are log-spaced, BUCKETS_PER_DECADE to a factor of ten:
a percentile read from them is the upper edge of its bucket, at most 12.2% above the true value.
"""

import math

BUCKETS_PER_DECADE = 20
_LOWEST = -20  # 0.1 ms: anything faster is counted here


def bucket_of(latency_ms: float) -> int:
    if latency_ms <= 0:
        return _LOWEST
    return max(_LOWEST, math.ceil(math.log10(latency_ms) * BUCKETS_PER_DECADE - 1e-9))


def upper_ms(bucket: int) -> float:
    """The bucket's upper edge: every latency counted in it is at most this."""
    return round(10 ** (bucket / BUCKETS_PER_DECADE), 3)
