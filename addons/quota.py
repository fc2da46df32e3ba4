"""Quota: the monthly request cap per account and the per-token rate limit, checked in memory.

- Monthly: each account's forwarded requests this calendar month (UTC) against its cap (the
  account's own, else its plan's: free 10,000, pro none). At the cap: 429 in the provider's
  shape with Retry-After (seconds to the 1st) until the month turns. The counters start from
  `usage_monthly`, which the writer keeps in the same transaction as the request rows.
- Per token: at most `rpm` requests in any 60 s (the token's own, else its account's, else
  `metrion_default_rpm`; 0 = no limit). Pass-through requests without a token are limited per
  key fingerprint. Over it: 429 with Retry-After (seconds until one would be admitted).
- The check and the count happen in one synchronous step on the event loop, so concurrent
  requests can never slip past a cap. Requests Metrion refuses (401, 429) do not count.
- Fails closed: an error here answers 500 rather than letting the request past.
"""

import collections
import datetime
import math
import time

from mitmproxy import ctx, exceptions, http

from addons.refuse import fail_closed, refuse
from addons.store import Store
from metrion_cli.quota import month_of, next_month_start

WINDOW_SECONDS = 60.0


class Quota:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.month = ""
        self.month_starts = self.month_ends = 0.0  # the current month, in epoch seconds
        self.default_rpm = 100
        self.used: dict[int, int] = {}          # account -> forwarded requests this month
        self.recent: dict[object, collections.deque] = {}  # limiter key -> admission times

    def load(self, loader) -> None:
        loader.add_option(
            "metrion_default_rpm", int, 100,
            "Requests per minute allowed per token when neither the token nor its account sets "
            "a limit; 0 for no limit.",
        )

    def configure(self, updated) -> None:
        if "metrion_default_rpm" in updated:
            if ctx.options.metrion_default_rpm < 0:
                raise exceptions.OptionsError("metrion_default_rpm must be 0 (no limit) or more")
            self.default_rpm = ctx.options.metrion_default_rpm

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        meta = flow.metadata.get("metrion")
        if not meta or meta.get("account_id") is None:
            return
        try:
            self._admit(flow, meta)
        except Exception as e:
            fail_closed(flow, "Quota", e)

    def _admit(self, flow: http.HTTPFlow, meta: dict) -> None:
        now = self.store.now()
        if not self.month_starts <= now < self.month_ends:
            self._start_month(now)
        account_id = meta["account_id"]
        account = self.store.directory.accounts.get(account_id)
        used = self.used.get(account_id, 0)
        cap = self.reached_cap(account, used)
        if cap is not None:
            resets = datetime.datetime.fromtimestamp(self.month_ends, datetime.timezone.utc)
            return refuse(
                flow, "monthly_cap",
                f"account {account.name!r} reached its monthly cap of {cap} requests "
                f"(plan {account.plan}); it resets at {resets:%Y-%m-%dT%H:%M:%SZ}. To lift it: "
                f"`metrion quota set {account.name} N` or `metrion accounts plan {account.name} pro`",
                {"retry-after": str(math.ceil(self.month_ends - now))})
        limiter_key, rpm = self._rate_limit(meta, account)
        if rpm:
            wait = self.take_rate_slot(limiter_key, rpm)
            if wait is not None:
                return refuse(flow, "rate_limit",
                              f"rate limit of {rpm} requests per minute reached for this token; "
                              f"retry in {wait} s", {"retry-after": str(wait)})
        self.used[account_id] = used + 1
        meta["month"] = self.month

    @staticmethod
    def reached_cap(account, used: int) -> int | None:
        """The account's monthly cap when `used` has reached it, else None."""
        cap = account.monthly_cap if account else None
        return cap if cap is not None and used >= cap else None

    def take_rate_slot(self, limiter_key, rpm: int) -> int | None:
        """None when one more request fits in the last 60 s (it is stamped); else the seconds
        until one would."""
        stamps = self.recent.get(limiter_key)
        if stamps is None:
            stamps = self.recent[limiter_key] = collections.deque()
        clock = time.monotonic()
        while stamps and stamps[0] <= clock - WINDOW_SECONDS:
            stamps.popleft()
        if len(stamps) >= rpm:
            return max(1, math.ceil(stamps[0] + WINDOW_SECONDS - clock))
        stamps.append(clock)
        return None

    def _rate_limit(self, meta: dict, account) -> tuple[object, int]:
        """The limiter's key (the token, else the key fingerprint) and its rpm: the token's,
        else the account's, else the instance default."""
        rpm = meta.get("token_rpm")
        if rpm is None:
            rpm = account.rpm if account and account.rpm is not None else self.default_rpm
        return meta.get("token_id") or ("key", meta.get("key_fingerprint")), rpm

    def _start_month(self, now: float) -> None:
        # At start-up: the month so far, as the writer persisted it. At a rollover: zero.
        moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        month = month_of(moment)
        self.month_starts = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
        self.month_ends = next_month_start(moment).timestamp()
        directory = self.store.directory
        self.used = dict(directory.requests_this_month) if directory.usage_month == month else {}
        self.month = month
