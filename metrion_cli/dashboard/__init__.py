"""The dashboard: Datasette over metrion.db (never vault.db), its pages given as metadata.

- Logs: the `requests` table, newest logged first (by id), faceted by requester, provider,
  model and status; unfiltered, the counts come from `request_facets`, filtered by facet values
  only from `request_facet_combinations` (the writer keeps both; dashboard/facets.py).
- Latency: p50/p95/p99 by day, provider and model, read from `latency_histogram` (the writer
  keeps it), so the page costs the same on a million rows as on a thousand.
- Usage: each account's requests this month against its cap.
Arbitrary SQL is the operator's only: the root actor, whose login URL `metrion ui` prints.
"""

from pathlib import Path

from ..accounts import PLAN_MONTHLY_CAP
from ..writer import FACET_COLUMNS

_PLAN_CAPS = " ".join(f"WHEN '{plan}' THEN {cap if cap is not None else 'NULL'}"
                      for plan, cap in PLAN_MONTHLY_CAP.items())

LATENCY_SQL = """
WITH h AS (
  SELECT day, provider, model, le_ms,
    sum(requests) OVER (PARTITION BY day, provider, model ORDER BY le_ms) AS at_or_below,
    sum(requests) OVER (PARTITION BY day, provider, model) AS total
  FROM latency_histogram
  WHERE day >= date('now', '-' || (coalesce(nullif(:days, ''), 7) - 1) || ' days')
)
SELECT day, provider, model, max(total) AS requests,
  min(CASE WHEN at_or_below >= 0.50 * total THEN le_ms END) AS p50_ms,
  min(CASE WHEN at_or_below >= 0.95 * total THEN le_ms END) AS p95_ms,
  min(CASE WHEN at_or_below >= 0.99 * total THEN le_ms END) AS p99_ms
FROM h GROUP BY day, provider, model
ORDER BY day DESC, requests DESC
"""

USAGE_SQL = f"""
SELECT a.name AS account, a.plan,
  coalesce(u.requests, 0) AS requests_this_month,
  CASE WHEN a.uncapped THEN NULL ELSE coalesce(a.monthly_cap, CASE a.plan {_PLAN_CAPS} END) END AS monthly_cap,
  coalesce(u.input_tokens, 0) AS input_tokens, coalesce(u.output_tokens, 0) AS output_tokens
FROM accounts a
LEFT JOIN usage_monthly u ON u.account_id = a.id AND u.month = strftime('%Y-%m', 'now')
ORDER BY requests_this_month DESC, a.name
"""

def metadata(database: str = "metrion") -> dict:
    return {
        "title": "Metrion",
        "description": "Every request through the gateway: logs, latency and usage.",
        "allow_sql": {"id": "root"},
        "databases": {
            database: {
                "tables": {
                    # Token hashes and key fingerprints are not secrets, but nobody browsing needs
                    # them: the operator's only, like SQL.
                    "tokens": {"allow": {"id": "root"}},
                    "registered_keys": {"allow": {"id": "root"}},
                    "requests": {
                        "title": "Logs",
                        # By id, newest logged first: unique, so Datasette's pages never
                        # repeat or skip rows that share a ts (migrations.m007).
                        "sort_desc": "id",
                        "facets": [{"counted": column} for column in FACET_COLUMNS],
                        "size": 50,
                    },
                },
                "queries": {
                    "latency": {
                        "title": "Latency by day, provider and model",
                        "description": "Percentiles in ms of forwarded requests, from arrival to "
                                       "the last byte; each is the upper edge of a histogram "
                                       "bucket (at most 12.2% above the exact value). days: how "
                                       "many days back (default 7).",
                        "sql": LATENCY_SQL,
                        "hide_sql": True,
                    },
                    "usage": {
                        "title": "Usage this month against the cap",
                        "description": "Forwarded requests and tokens per account this calendar "
                                       "month (UTC); an empty cap means none.",
                        "sql": USAGE_SQL,
                        "hide_sql": True,
                    },
                },
            },
        },
    }


SETTINGS = {
    # Suggestions run extra GROUP BYs over every column of a million-row log on each page view.
    "suggest_facets": False,
    "facet_time_limit_ms": 250,
    "default_page_size": 50,
    # `requests.csv?_stream=on` is how the whole log leaves as CSV; Datasette cuts at 100 MB.
    "max_csv_mb": 0,
}


def build(metrion_db: Path):
    """A Datasette for this database (read-only: Datasette opens mutable files `mode=ro`)."""
    from datasette.app import Datasette
    from datasette.plugins import pm

    from . import facets

    if not pm.is_registered(facets):
        pm.register(facets, name="metrion_facets")
    return Datasette([str(metrion_db)], metadata=metadata(Path(metrion_db).stem), settings=SETTINGS)
