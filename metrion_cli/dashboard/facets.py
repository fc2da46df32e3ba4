"""The Logs page's facets, read from the counts the writer keeps (`request_facets`).

Datasette counts a column facet with a GROUP BY over the page's rows: on an unfiltered log of a
million rows, a scan of a million-entry index per facet (~50 ms each, four of them). The writer
already counts each request under its requester, provider, model and status, in the same
transaction as the row, so the unfiltered page reads those few rows instead. A filtered page
(`?provider=anthropic`, a search, `_where`) is counted by Datasette, over the filtered rows.
"""

from datasette import hookimpl
from datasette.facets import ColumnFacet
from datasette.utils import path_with_added_args, path_with_removed_args

from ..writer import FACET_COLUMNS

_COUNTS_SQL = ("SELECT value, requests AS count FROM request_facets WHERE facet = :facet "
               "ORDER BY count DESC, value LIMIT :limit")


class CountedFacet(ColumnFacet):
    """`{"counted": "provider"}` in a table's metadata facets: a column facet of `requests`
    whose unfiltered counts come from `request_facets`."""

    type = "counted"

    def _unfiltered(self, columns: list[str]) -> bool:
        return (self.table == "requests" and not self.params
                and self.sql.rstrip().endswith(" from requests")
                and all(column in FACET_COLUMNS for column in columns))

    async def facet_results(self):
        configs = self.get_configs()
        columns = [c["config"].get("column") or c["config"]["simple"] for c in configs]
        if not self._unfiltered(columns):
            results, timed_out = await super().facet_results()
            for result in results:
                result["type"] = "column"  # shown beside the name otherwise: "provider (counted)"
            return results, timed_out
        facet_size = self.get_facet_size()
        results = []
        for config, column in zip(configs, columns):
            rows = (await self.ds.execute(self.database, _COUNTS_SQL,
                                          {"facet": column, "limit": facet_size + 1})).rows
            results.append({
                "name": column,
                "type": "column",  # what it is to a reader; the page shows any other type
                "hideable": config["source"] != "metadata",
                "toggle_url": self.ds.urls.path(path_with_removed_args(self.request, {"_facet": column})),
                "results": [{
                    "value": row["value"],
                    "label": row["value"],
                    "count": row["count"],
                    # No filter is set on this page: each value's link adds one.
                    "toggle_url": self.ds.absolute_url(
                        self.request, self.ds.urls.path(path_with_added_args(self.request, {column: row["value"]}))),
                    "selected": False,
                } for row in rows[:facet_size]],
                "truncated": len(rows) > facet_size,
            })
        return results, []


@hookimpl
def register_facet_classes():
    return [CountedFacet]
