"""The Metrion script: `mitmdump -s addons/metrion.py` loads every Metrion addon.

`metrion serve` builds the same list into its own lean Master (metrion_cli/serve.py).
"""

from addons.bodycheck import BodyCheck
from addons.credentials import Credentials
from addons.quota import Quota
from addons.recorder import Recorder
from addons.router import Router
from addons.store import Store
from addons.upstream import UpstreamErrors


def make_addons() -> list:
    store = Store()
    # Hooks run in this order. The Store comes last so that its done() (the writer's final
    # flush) runs after the Recorder's, which records the flows still in flight.
    return [Router(store), Credentials(store), BodyCheck(), Quota(store), UpstreamErrors(), Recorder(store), store]


addons = make_addons()
