"""The Logs page's facets, read from the counts the writer keeps.

Datasette counts a column facet with a GROUP BY over the page's rows: on an unfiltered log of a
million rows, a scan of a million-entry index per facet (~50 ms each, four of them); filtered by
a facet value that matches 80,000-170,000 of them, 0.6-0.9 s, each facet cut off at its 250 ms
limit. The writer counts each request, in the same transaction as its row, under each of its
requester, provider, model and status (`request_facets`) and under their combination
(`request_facet_combinations`). So the unfiltered page reads the first, and a page filtered only
by facet values (`?provider=xai&status=200`) sums the second. Any other filter (a search,
`_where`, `ts__gt=...`), and any page after the first (`_next=`), is counted by Datasette over
its rows.
"""

from datasette import hookimpl
from datasette.database import QueryInterrupted
from datasette.facets import ColumnFacet
from datasette.filters import Filters
from datasette.utils import path_with_added_args, path_with_removed_args

from ..writer import FACET_COLUMNS

_COUNTS_SQL = ("SELECT value, requests AS count FROM request_facets WHERE facet = :facet "
               "ORDER BY count DESC, value LIMIT :limit")


def _combination_counts_sql(column: str, filtered: list[str]) -> str:
    where = " AND ".join([f"{column} IS NOT NULL", *(f"{c} = :{c}" for c in filtered)])
    return (f"SELECT {column} AS value, sum(requests) AS count FROM request_facet_combinations "
            f"WHERE {where} GROUP BY {column} ORDER BY count DESC, value LIMIT :limit")


class CountedFacet(ColumnFacet):
    """`{"counted": "provider"}` in a table's metadata facets: a column facet of `requests`
    whose counts come from what the writer keeps, when the page is unfiltered or filtered by
    facet values only."""

    type = "counted"

    def _facet_filters(self, columns: list[str]) -> dict[str, str] | None:
        """The page's filters as {facet column: value} when it has no others, else None."""
        if self.table != "requests" or not all(column in FACET_COLUMNS for column in columns):
            return None
        # What Datasette's table view takes for filters: every argument but `_name` ones.
        pairs = [(k, v) for k, v in self.get_querystring_pairs() if not (k.startswith("_") and "__" not in k)]
        filters: dict[str, str] = {}
        for key, value in pairs:
            column = key.removesuffix("__exact")
            if column not in FACET_COLUMNS or column in filters or not value:
                return None  # another filter, one column twice or empty: Datasette counts
            filters[column] = value
        # The page's SQL must hold those conditions and no other: `_where`, `_search`, a later
        # page's cursor (`_next`) or a plugin's filter add theirs, and Datasette counts.
        bits, params = Filters(sorted(pairs)).build_where_clauses(self.table)
        where = f" where {' and '.join(bits)}" if bits else ""
        if dict(self.params or {}) != params or not self.sql.rstrip().endswith(f" from requests{where}"):
            return None
        return filters

    async def facet_results(self):
        configs = self.get_configs()
        columns = [c["config"].get("column") or c["config"]["simple"] for c in configs]
        filters = self._facet_filters(columns)
        if filters is None:
            results, timed_out = await super().facet_results()
            for result in results:
                result["type"] = "column"  # shown beside the name otherwise: "provider (counted)"
            return results, timed_out
        facet_size = self.get_facet_size()
        selected_pairs = self.get_querystring_pairs()
        results, timed_out = [], []
        for config, column in zip(configs, columns):
            if filters:
                sql, params = _combination_counts_sql(column, list(filters)), dict(filters)
            else:
                sql, params = _COUNTS_SQL, {"facet": column}
            try:
                # As Datasette's own facets: each gets facet_time_limit_ms, and one that runs out
                # is listed as timed out, the page shown all the same.
                rows = (await self.ds.execute(self.database, sql, {**params, "limit": facet_size + 1},
                                              custom_time_limit=self.ds.setting("facet_time_limit_ms"))).rows
            except QueryInterrupted:
                timed_out.append(column)
                continue
            results.append({
                "name": column,
                "type": "column",  # what it is to a reader; the page shows any other type
                "hideable": config["source"] != "metadata",
                "toggle_url": self.ds.urls.path(path_with_removed_args(self.request, {"_facet": column})),
                "results": [self._value(column, row, selected_pairs) for row in rows[:facet_size]],
                "truncated": len(rows) > facet_size,
            })
        return results, timed_out

    def _value(self, column: str, row, selected_pairs: list[tuple[str, str]]) -> dict:
        # As Datasette's ColumnFacet: a selected value's link takes its filter off, another's adds it.
        selected = (column, str(row["value"])) in selected_pairs
        if selected:
            path = path_with_removed_args(self.request, {column: str(row["value"])})
        else:
            path = path_with_added_args(self.request, {column: row["value"]})
        return {"value": row["value"], "label": row["value"], "count": row["count"],
                "toggle_url": self.ds.absolute_url(self.request, self.ds.urls.path(path)), "selected": selected}


@hookimpl
def register_facet_classes():
    return [CountedFacet]
