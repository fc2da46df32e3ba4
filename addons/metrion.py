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
    return [store, Router(), Credentials(store), BodyCheck(), Quota(store), UpstreamErrors(), Recorder(store)]


addons = make_addons()
