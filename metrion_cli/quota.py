"""Calendar months (UTC) and what an account has used of its cap."""

import datetime

from sqlite_utils import Database

from . import accounts


def month_of(moment: datetime.datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def next_month_start(moment: datetime.datetime) -> datetime.datetime:
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return datetime.datetime(year, month, 1, tzinfo=datetime.timezone.utc)


def show(db: Database, now: datetime.datetime, account: str | None = None) -> list[dict]:
    rows = [accounts.get(db, account)] if account else accounts.listing(db)
    month = month_of(now)
    used = {r["account_id"]: r["requests"] for r in db.query(
        "SELECT account_id, requests FROM usage_monthly WHERE month = ?", [month])}
    resets = next_month_start(now).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = []
    for row in rows:
        cap = accounts.monthly_cap(row)
        result.append({"account": row["name"], "plan": row["plan"], "month": month,
                       "used": used.get(row["id"], 0), "cap": "none" if cap is None else cap,
                       "rpm": "default" if row.get("rpm") is None else (row["rpm"] or "none"),
                       "resets_at": resets})
    return result
