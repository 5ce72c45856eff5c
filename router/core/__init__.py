"""Sans-IO decision cores of the router: quotas, admission, hedging, outlier ejection, retries.

Every class here takes time (`now`, seconds on a monotonic clock) and randomness as arguments and does no I/O.
"""
