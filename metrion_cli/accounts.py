"""Accounts: who requests are attributed to, and which plan caps them."""

from sqlite_utils import Database

from .db import now_iso

PLAN_MONTHLY_CAP: dict[str, int | None] = {"free": 10_000, "pro": None}
PLANS = tuple(PLAN_MONTHLY_CAP)
# Pass-through requests that no token or registered key claims land here.
DEFAULT_ACCOUNT = "default"


def add(db: Database, name: str, plan: str = "free") -> dict:
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r}; choose one of {', '.join(PLANS)}")
    if find(db, name):
        raise ValueError(f"account {name!r} already exists")
    db["accounts"].insert({"name": name, "plan": plan, "created": now_iso()})
    return get(db, name)


def ensure(db: Database, name: str, plan: str = "free") -> dict:
    return find(db, name) or add(db, name, plan)


def find(db: Database, name_or_id: str | int) -> dict | None:
    rows = list(db.query("SELECT * FROM accounts WHERE name = ?", [str(name_or_id)]))
    if not rows and str(name_or_id).isdigit():
        rows = list(db.query("SELECT * FROM accounts WHERE id = ?", [int(name_or_id)]))
    return rows[0] if rows else None


def get(db: Database, name_or_id: str | int) -> dict:
    account = find(db, name_or_id)
    if account is None:
        raise LookupError(f"no account {name_or_id!r} (see `metrion accounts list`)")
    return account


def listing(db: Database) -> list[dict]:
    return list(db.query(
        "SELECT a.*, (SELECT count(*) FROM tokens t WHERE t.account_id = a.id AND t.revoked IS NULL)"
        " AS active_tokens FROM accounts a ORDER BY a.id"
    ))


def monthly_cap(account: dict) -> int | None:
    """The cap in force: none when uncapped, else the account's own, else its plan's."""
    if account.get("uncapped"):
        return None
    if account.get("monthly_cap") is not None:
        return account["monthly_cap"]
    return PLAN_MONTHLY_CAP[account["plan"]]


def set_plan(db: Database, name: str, plan: str) -> dict:
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r}; choose one of {', '.join(PLANS)}")
    account = get(db, name)
    db.execute("UPDATE accounts SET plan = ? WHERE id = ?", [plan, account["id"]])
    return get(db, account["id"])


def set_cap(db: Database, name: str, cap: int | str | None) -> dict:
    """cap: a number of requests a month, "none" for no cap, or None for the plan's cap."""
    account = get(db, name)
    if cap == "none":
        values = [None, 1]
    elif cap is None:
        values = [None, 0]
    else:
        if int(cap) < 0:
            raise ValueError("a monthly cap cannot be negative")
        values = [int(cap), 0]
    db.execute("UPDATE accounts SET monthly_cap = ?, uncapped = ? WHERE id = ?", [*values, account["id"]])
    return get(db, account["id"])


def set_rpm(db: Database, name: str, rpm: int | None) -> dict:
    """rpm: requests per minute per token, 0 for no limit, None for the instance default."""
    account = get(db, name)
    db.execute("UPDATE accounts SET rpm = ? WHERE id = ?", [rpm, account["id"]])
    return get(db, account["id"])


def register_key(db: Database, account_id: int, provider: str, fingerprint: str, last4: str) -> None:
    """Claim a pass-through key for an account by its fingerprint (the key itself is not kept)."""
    with db.atomic():
        db.execute("DELETE FROM registered_keys WHERE fingerprint = ?", [fingerprint])
        db["registered_keys"].insert({"account_id": account_id, "provider": provider,
                                      "fingerprint": fingerprint, "last4": last4, "created": now_iso()})
