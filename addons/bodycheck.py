"""BodyCheck: a request its provider would refuse as malformed is refused here, unsent.

- A body that is not JSON, or lacks what every request of that endpoint needs (the provider
  module's REQUIRED_FIELDS, e.g. Anthropic's max_tokens): 400 in the provider's shape. It is
  neither forwarded nor counted against the cap.
- Anything else goes on unchanged for the provider to judge: Metrion checks presence, not
  values. A compressed request body is not inspected.
"""

from mitmproxy import http

from addons import headers, providers
from addons.refuse import refuse


class BodyCheck:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        meta = flow.metadata.get("metrion")
        if not meta or not meta.get("provider") or headers.get(flow.request.headers, b"content-encoding"):
            return
        provider = providers.get(meta["provider"])
        problem = providers.request_problem(
            provider.REQUIRED_FIELDS, flow.request.method, flow.request.path, flow.request.raw_content or b"")
        if problem:
            refuse(flow, "bad_request", problem)
