"""The Metrion script: `mitmdump -s addons/metrion.py` loads every Metrion addon.

`metrion serve` builds the same addon into its own lean Master (metrion_cli/serve.py).
"""

from addons.bodycheck import BodyCheck
from addons.credentials import Credentials
from addons.quota import Quota
from addons.recorder import Recorder
from addons.router import Router
from addons.store import Store
from addons.upstream import UpstreamErrors


class Metrion:
    """Metrion's addons, one per concern, as the children of one addon.

    mitmproxy dispatches every event to every top-level addon, each time inside its own
    `safecall` and coroutine, and once more with an `update` event after each flow event: about
    eight passes per request. Held as children, the six addons cost those passes once instead
    of seven times (measured: most of Metrion's overhead over the bare lean Master).

    Children are called in this order. The Store comes last so that its done() (the writer's
    final flush) runs after the Recorder's, which records the flows still in flight. Each child
    catches its own errors: one raising would skip the later children for that event.
    """

    def __init__(self) -> None:
        self.store = Store()
        self.addons = [Router(self.store), Credentials(self.store), BodyCheck(), Quota(self.store),
                       UpstreamErrors(self.store), Recorder(self.store), self.store]


addons = [Metrion()]
