"""The dashboard (Datasette over metrion.db) and `metrion export`.

In process: Datasette built exactly as `metrion ui` builds it, queried with `ds.client` over a
database the real writer filled. End to end: traffic through a real `metrion serve`, then a real
`metrion ui` on a free port and `metrion export`, checked as a user would.
"""

import asyncio
import datetime
import html.parser
import json
import urllib.parse

import httpx2 as httpx
import openai
import pytest

from metrion_cli import accounts, db as dbmod
from metrion_cli.dashboard import build
from metrion_cli.paths import resolve
from metrion_cli.writer import Writer

from conftest import VENV_BIN, Gateway, browser_dom, free_port

TODAY = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


class RenderedPage(html.parser.HTMLParser):
    """What a reader sees on a rendered Datasette page: its <h1>, the rows of its table (each
    as its cells' text) and its facets ({column: {value: (count, link)}})."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.title = ""
        self.rows: list[list[str]] = []
        self.facets: dict[str, dict[str, tuple[int, str]]] = {}
        self._in: str | None = None   # "h1", "td" or "facet" while inside one
        self._facet: str | None = None
        self._link = self._text = ""
        self._in_body = False
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "h1":
            self._in, self._text = "h1", ""
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._in, self._text = "td", ""
        elif tag == "div" and "facet-info" in (attrs.get("class") or "").split():
            self._facet = attrs["data-column"]
            self.facets[self._facet] = {}
        elif tag == "li" and self._facet:
            self._in, self._text, self._link = "facet", "", ""
        elif tag == "a" and self._in == "facet":
            self._link = attrs.get("href", "")

    def handle_endtag(self, tag):
        if tag == "h1" and self._in == "h1":
            self.title, self._in = self._text.strip(), None
        elif tag == "td" and self._in == "td":
            self.rows[-1].append(self._text.strip())
            self._in = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "li" and self._in == "facet":
            # "value count", or "value · count ✖" for the value the page is filtered by
            value, _, count = self._text.strip().removesuffix("✖").strip().rpartition(" ")
            self.facets[self._facet][value.strip().removesuffix(" ·")] = (int(count.replace(",", "")), self._link)
            self._in = None
        elif tag == "ul" and self._facet:
            self._facet = None

    def handle_data(self, data):
        if self._in:
            self._text += data


def row(latency_ms: float, **fields) -> dict:
    base = {"ts": f"{TODAY}T10:00:00.000Z", "account_id": 1, "provider": "openai", "method": "POST",
            "endpoint": "/v1/chat/completions", "model": "gpt-4o-mini", "status": 200, "streamed": 0,
            "forwarded": 1, "input_tokens": 10, "output_tokens": 5, "latency_ms": latency_ms,
            "requester": "alice", "mode": "stored", "client_aborted": 0}
    return {**base, **fields}


@pytest.fixture
def filled(data_dir):
    """metrion.db with account `acme` (free plan) and 100 OpenAI requests of 1..100 ms, plus 3
    Anthropic ones from bob, written by the real Writer."""
    paths = resolve(data_dir)
    dbmod.initialise(paths)
    db = dbmod.open_metrion(paths)
    accounts.add(db, "acme")
    writer = Writer(paths.metrion_db).start()
    for ms in range(1, 101):
        writer.put(row(float(ms)))
    for _ in range(3):
        writer.put(row(2000.0, provider="anthropic", model="claude-sonnet-4", requester="bob", status=529))
    writer.close()
    return paths


async def get_json(ds, path: str, **kwargs):
    response = await ds.client.get(path, **kwargs)
    assert response.status_code == 200, response.text[:500]
    return response.json()


def test_latency_percentiles_come_from_the_histogram(filled):
    asyncio.run(_test_latency_percentiles_come_from_the_histogram(build(filled.metrion_db)))


async def _test_latency_percentiles_come_from_the_histogram(ds):
    rows = await get_json(ds, "/metrion/latency.json?_shape=array")
    by_provider = {r["provider"]: r for r in rows}
    openai_row = by_provider["openai"]
    assert openai_row["day"] == TODAY and openai_row["requests"] == 100
    # Each percentile is its bucket's upper edge: never below the exact value, at most 12.2% above.
    for name, exact in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99)):
        assert exact <= openai_row[name] <= exact * 1.122, (name, openai_row[name])
    assert 2000 <= by_provider["anthropic"]["p99_ms"] <= 2240
    # ?days= reaches back further; the rows are today's, so any window holds them.
    assert len(await get_json(ds, "/metrion/latency.json?_shape=array&days=30")) == 2


def test_logs_are_newest_first_with_facets(filled):
    asyncio.run(_test_logs_are_newest_first_with_facets(build(filled.metrion_db)))


async def _test_logs_are_newest_first_with_facets(ds):
    page = await get_json(ds, "/metrion/requests.json?_shape=objects")
    assert page["filtered_table_rows_count"] == 103
    facets = page["facet_results"]
    assert set(facets) == {"requester", "provider", "model", "status"}
    counts = {f["value"]: f["count"] for f in facets["requester"]["results"]}
    assert counts == {"alice": 100, "bob": 3}
    assert {f["value"]: f["count"] for f in facets["status"]["results"]} == {200: 100, 529: 3}
    html = (await ds.client.get("/metrion/requests")).text
    assert "Logs" in html and "bob" in html
    filtered = await get_json(ds, "/metrion/requests.json?_shape=objects&provider=anthropic&status__gte=400")
    assert filtered["filtered_table_rows_count"] == 3
    # A filtered page's facets count the filtered rows, not the whole log.
    assert {f["value"]: f["count"] for f in filtered["facet_results"]["requester"]["results"]} == {"bob": 3}
    assert {f["value"]: f["count"] for f in filtered["facet_results"]["model"]["results"]} == {"claude-sonnet-4": 3}
    # A facet value's link filters the page by it.
    [bob] = [f for f in facets["requester"]["results"] if f["value"] == "bob"]
    link = urllib.parse.urlsplit(bob["toggle_url"])
    by_bob = await get_json(ds, f"{link.path}?{link.query}")
    assert by_bob["filtered_table_rows_count"] == 3
    csv = (await ds.client.get("/metrion/requests.csv?_stream=on&_size=max")).text.splitlines()
    assert csv[0].startswith("id,ts,") and len(csv) == 1 + 103


def test_usage_shows_the_month_against_the_cap(filled):
    asyncio.run(_test_usage_shows_the_month_against_the_cap(build(filled.metrion_db)))


async def _test_usage_shows_the_month_against_the_cap(ds):
    [acme] = [r for r in await get_json(ds, "/metrion/usage.json?_shape=array") if r["account"] == "acme"]
    assert acme["requests_this_month"] == 103 and acme["monthly_cap"] == 10_000
    assert acme["input_tokens"] == 1030 and acme["output_tokens"] == 515


def test_only_the_operator_runs_sql_and_the_vault_is_never_opened(filled):
    asyncio.run(_test_only_the_operator_runs_sql_and_the_vault_is_never_opened(build(filled.metrion_db)))


async def _test_only_the_operator_runs_sql_and_the_vault_is_never_opened(ds):
    assert [d["name"] for d in (await get_json(ds, "/-/databases.json"))] == ["metrion"]
    anonymous = await ds.client.get("/metrion.json?sql=select+count(*)+from+requests")
    assert anonymous.status_code == 403
    root = {"ds_actor": ds.sign({"a": {"id": "root"}}, "actor")}
    allowed = await ds.client.get("/metrion.json?sql=select+count(*)+from+requests&_shape=array", cookies=root)
    assert allowed.status_code == 200 and allowed.json() == [{"count(*)": 103}]
    for table in ("tokens", "registered_keys"):
        assert (await ds.client.get(f"/metrion/{table}")).status_code == 403
        assert (await ds.client.get(f"/metrion/{table}", cookies=root)).status_code == 200


def upgraded_older_log(data_dir, migration: str, undo: list[str], rows: list[dict]):
    """metrion.db as it was before `migration` (whose changes `undo` reverts) holding `rows`,
    then upgraded as `metrion serve` does at start."""
    paths = resolve(data_dir)
    dbmod.initialise(paths)
    db = dbmod.open_metrion(paths)
    for statement in undo:
        db.execute(statement)
    db.execute("DELETE FROM _sqlite_migrations WHERE name = ?", [migration])
    db["requests"].insert_all(rows)
    dbmod.upgrade(paths)
    return db


FACET_INDEXES = {f"requests_{column}" for column in ("provider", "model", "status", "requester")}


def test_upgrade_fills_the_histogram_and_indexes_facets_by_column_on_an_older_log(data_dir):
    # A log from before m003, no histogram and no facet index, then through m005, whose indexes
    # by column and time m007 replaces by column-only ones.
    db = upgraded_older_log(
        data_dir, "m003_dashboard",
        ["DROP TABLE latency_histogram",
         *(f"DROP INDEX {index}" for index in FACET_INDEXES),
         "DELETE FROM _sqlite_migrations WHERE name IN ('m005_facet_indexes_by_time', "
         "'m007_facet_indexes_by_column')"],
        [row(5.0), row(7.0), row(7.0, forwarded=0)])
    histogram = list(db.query("SELECT le_ms, requests FROM latency_histogram ORDER BY le_ms"))
    assert histogram == [{"le_ms": 5.012, "requests": 1}, {"le_ms": 7.079, "requests": 1}]
    indexes = {r["name"]: r["sql"] for r in db.query(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests' AND sql IS NOT NULL")}
    assert indexes.keys() == {"requests_ts", "requests_account_ts", *FACET_INDEXES}, indexes
    assert all(indexes[f"requests_{c}"].endswith(f"requests({c})") for c in ("provider", "model", "status", "requester"))


def test_unfiltered_facets_are_the_writers_counts_and_match_the_log(filled):
    """The unfiltered Logs page reads request_facets; those counts are what a GROUP BY over
    the rows gives, for every faceted column, NULLs left out."""
    writer = Writer(filled.metrion_db).start()
    writer.put(row(3.0, requester=None, status=None, model=None))
    writer.close()
    db = dbmod.open_metrion(filled)
    for column in ("requester", "provider", "model", "status"):
        from_rows = {r["value"]: r["n"] for r in db.query(
            f"SELECT {column} AS value, count(*) AS n FROM requests WHERE {column} IS NOT NULL GROUP BY 1")}
        kept = {r["value"]: r["requests"] for r in db.query(
            "SELECT value, requests FROM request_facets WHERE facet = ?", [column])}
        assert kept == from_rows, column
    page = asyncio.run(get_json(build(filled.metrion_db), "/metrion/requests.json?_shape=objects"))
    assert {f["value"]: f["count"] for f in page["facet_results"]["provider"]["results"]} == {"openai": 101, "anthropic": 3}
    assert {f["value"]: f["count"] for f in page["facet_results"]["status"]["results"]} == {200: 100, 529: 3}
    # The page's speed on a big log rests on reading those counts, not on counting the rows:
    # with the kept counts marked, only the unfiltered page shows the mark.
    db.execute("UPDATE request_facets SET requests = requests + 1000")
    ds = build(filled.metrion_db)
    unfiltered = asyncio.run(get_json(ds, "/metrion/requests.json?_shape=objects&_sort=id"))
    assert {f["value"]: f["count"] for f in unfiltered["facet_results"]["provider"]["results"]} == \
        {"openai": 1101, "anthropic": 1003}
    filtered = asyncio.run(get_json(ds, "/metrion/requests.json?_shape=objects&status=200"))
    assert {f["value"]: f["count"] for f in filtered["facet_results"]["provider"]["results"]} == {"openai": 100}


def facet_counts(page: dict) -> dict[str, dict]:
    return {name: {f["value"]: f["count"] for f in facet["results"]} for name, facet in page["facet_results"].items()}


# Logs pages whose facets the writer's counts serve (unfiltered, or filtered by facet values
# only), and pages Datasette must count itself (any other filter, a later page).
KEPT_COUNTS_PAGES = ("", "_nocol=usage_raw&_sort=id", "provider=openai", "status=200", "provider=openai&status=200",
                     "requester=bob&model__exact=claude-sonnet-4", "model=gpt-4o-mini&_size=5&_nocol=usage_raw",
                     "provider=anthropic&status=529&requester=bob&model=claude-sonnet-4&_facet_size=1")
COUNTED_BY_DATASETTE = ("provider=anthropic&ts__gte=2000-01-01", "provider=anthropic&endpoint=/v1/messages",
                        "provider=anthropic&provider=openai", "provider__not=openai", "provider=anthropic&requester=",
                        "provider=anthropic&_size=1&_next=103,103")  # page 2: the rows after id 103


def test_facets_from_the_writers_counts_are_what_datasette_counts_and_the_counts_stay_one_row_each(
        filled, monkeypatch):
    """The writer's per-value and per-combination counts match the log (NULLs one value, never
    a second row), and every Logs page they serve shows the facets Datasette's own counting
    shows: values, counts, selected values, links, truncation."""
    for requester in (None, None, "carol"):  # one batch each: the NULL combination found again
        writer = Writer(filled.metrion_db).start()
        writer.put(row(3.0, requester=requester, status=None, model=None))
        writer.put(row(4.0, requester=requester, status=500))
        writer.close()
    db = dbmod.open_metrion(filled)
    kept = sorted(db.execute("SELECT requester, provider, model, status, requests FROM request_facet_combinations"
                             " ORDER BY 1, 2, 3, 4").fetchall(), key=repr)
    grouped = sorted(db.execute("SELECT requester, provider, model, status, count(*) FROM requests"
                                " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4").fetchall(), key=repr)
    assert kept == grouped and (None, "openai", None, None, 2) in kept

    def facets(query: str) -> dict:
        return asyncio.run(get_json(build(filled.metrion_db), f"/metrion/requests.json?{query}"))["facet_results"]

    served = {query: facets(query) for query in KEPT_COUNTS_PAGES + COUNTED_BY_DATASETTE}
    from metrion_cli.dashboard.facets import CountedFacet
    monkeypatch.setattr(CountedFacet, "_facet_filters", lambda self, columns: None)  # Datasette counts all
    for query, facet_results in served.items():
        assert facet_results == facets(query), query


def test_only_pages_filtered_by_facet_values_read_the_writers_combinations(filled):
    """The speed on a big log rests on reading the kept counts, not counting the rows: with
    them marked, exactly the pages filtered by facet values show the mark."""
    db = dbmod.open_metrion(filled)
    db.execute("UPDATE request_facet_combinations SET requests = requests + 1000")
    ds = build(filled.metrion_db)
    for query in KEPT_COUNTS_PAGES[2:] + COUNTED_BY_DATASETTE:
        page = asyncio.run(get_json(ds, f"/metrion/requests.json?{query}"))
        counts = [count for counts in facet_counts(page).values() for count in counts.values()]
        if query in KEPT_COUNTS_PAGES:
            assert counts and all(count > 1000 for count in counts), query
        else:  # counted from the rows, unmarked (one page matches no row and shows no value)
            assert all(count < 1000 for count in counts), query


def test_upgrade_counts_the_facet_combinations_of_an_older_log(data_dir):
    db = upgraded_older_log(data_dir, "m006_facet_combinations", ["DROP TABLE request_facet_combinations"],
                            [row(5.0), row(7.0), row(7.0, requester=None, status=500)])
    kept = {(r["requester"], r["provider"], r["model"], r["status"]): r["requests"]
            for r in db.query("SELECT * FROM request_facet_combinations")}
    assert kept == {("alice", "openai", "gpt-4o-mini", 200): 2, (None, "openai", "gpt-4o-mini", 500): 1}


def test_a_page_filtered_by_a_facet_value_reads_its_newest_rows_in_order(filled):
    """The query Datasette runs for a Logs page filtered by a facet value: each facet column's
    index hands its rows over newest logged first, with no sort of every matching row (0.8-1.0 s
    for 170,000 matches of a million)."""
    ds = build(filled.metrion_db)
    db = dbmod.open_metrion(filled)
    for column, value in (("requester", "alice"), ("provider", "openai"), ("model", "gpt-4o-mini"),
                          ("status", "200")):
        page = asyncio.run(get_json(ds, f"/metrion/requests.json?{column}={value}"))
        assert page["rows"]
        query = page["query"]
        plan = " | ".join(r["detail"] for r in db.query(f"EXPLAIN QUERY PLAN {query['sql']}", query["params"]))
        assert f"INDEX requests_{column} (" in plan and "TEMP B-TREE" not in plan, plan


def test_paging_through_the_logs_shows_every_row_once_newest_first_even_when_times_tie(filled):
    """The filled log's 103 rows share one ts: following each page's next link
    (Datasette's `_next`, 7 rows a page) shows each row once, newest logged first, unfiltered
    and filtered by a facet value. (Ordered by ts, Datasette's first page and the pages after
    it put such rows in different orders.)"""
    ds = build(filled.metrion_db)
    for start, expected in (("/metrion/requests.json?_size=7", 103), ("/metrion/requests.json?provider=openai&_size=7", 100)):
        ids, path = [], start
        for _ in range(30):  # 15 pages at most; a cursor that never moves on fails, not hangs
            if not path:
                break
            page = asyncio.run(get_json(ds, path))
            ids.extend(r[0] for r in page["rows"])  # the id, first column
            path = page["next_url"] and "/" + page["next_url"].split("://", 1)[-1].split("/", 1)[-1]
        assert len(ids) == expected and ids == sorted(set(ids), reverse=True), start


def test_upgrade_counts_the_facets_of_an_older_log(data_dir):
    db = upgraded_older_log(data_dir, "m004_facet_counts", ["DROP TABLE request_facets"],
                            [row(5.0), row(7.0), row(7.0, requester="bob", status=500)])
    kept = {(r["facet"], r["value"]): r["requests"] for r in db.query("SELECT * FROM request_facets")}
    assert kept == {("requester", "alice"): 2, ("requester", "bob"): 1, ("provider", "openai"): 3,
                    ("model", "gpt-4o-mini"): 3, ("status", 200): 2, ("status", 500): 1}


def test_ui_and_export_end_to_end(acme, fake_openai, start_gateway, data_dir, secrets_used, run_cli, tmp_path):
    gateway = start_gateway({"openai": fake_openai.url})
    client = openai.OpenAI(api_key=acme.token, base_url=gateway.url() + "/v1", max_retries=0)
    for user in ("alice@example.com", "alice@example.com", "bob@example.com"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-metrion-user": user})
    gateway.wait_rows(3)
    gateway.stop()

    port = free_port()
    ui = Gateway([str(VENV_BIN / "metrion"), "ui", "--port", str(port)],
                 data_dir, secrets_used, {})
    try:
        base = f"http://127.0.0.1:{port}"
        logs = httpx.get(base + "/metrion/requests", timeout=10)
        assert logs.status_code == 200 and "bob@example.com" in logs.text
        # In a browser: the Logs page lists the three requests, its requester facet counts
        # them, and following a facet value shows that requester's requests only.
        dom = browser_dom(base + "/metrion/requests", tmp_path)
        page = RenderedPage(dom)
        assert page.title == "Logs" and len(page.rows) == 3 and "(counted)" not in dom
        requesters = page.facets["requester"]
        assert {value: count for value, (count, _) in requesters.items()} == \
            {"alice@example.com": 2, "bob@example.com": 1}
        by_bob = RenderedPage(browser_dom(requesters["bob@example.com"][1], tmp_path))
        assert len(by_bob.rows) == 1 and "bob@example.com" in by_bob.rows[0]
        assert {value: count for value, (count, _) in by_bob.facets["requester"].items()} == {"bob@example.com": 1}
        latency = RenderedPage(browser_dom(base + "/metrion/latency", tmp_path))
        assert len(latency.rows) == 1 and "openai" in latency.rows[0]
        [latency] = httpx.get(base + "/metrion/latency.json?_shape=array", timeout=10).json()
        assert latency["provider"] == "openai" and latency["requests"] == 3 and latency["p50_ms"] > 0
        assert "operator login" in "".join(ui.output)
    finally:
        assert ui.stop() == 0

    out = tmp_path / "acme.json"
    run_cli("export", "acme", "-o", str(out))
    exported = json.loads(out.read_text())
    assert exported["account"]["name"] == "acme" and exported["account"]["monthly_cap"] == 10_000
    assert [r["requester"] for r in exported["requests"]] == ["alice@example.com", "alice@example.com", "bob@example.com"]
    assert exported["usage"][0]["requests"] == 3
    assert exported["tokens"][0]["prefix"] and acme.token.startswith(exported["tokens"][0]["prefix"])
    text = out.read_text()
    assert all(secret not in text for secret in secrets_used)


def test_export_of_an_unknown_account_is_one_clear_line_and_keeps_the_old_file(acme, run_cli, tmp_path):
    previous = tmp_path / "export.json"
    previous.write_text('{"kept": true}')
    result = run_cli("export", "nobody", "-o", str(previous), ok=False)
    assert result.exit_code == 1 and "nobody" in result.output and "Traceback" not in result.output
    assert previous.read_text() == '{"kept": true}' and list(tmp_path.glob("*.partial")) == []
