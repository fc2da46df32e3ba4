"""The Metrion script: `mitmdump -s addons/metrion.py` loads every Metrion addon.

`metrion serve` builds the same addon into its own lean Master (metrion_cli/serve.py).
"""

from addons.bodycheck import BodyCheck
from addons.credentials import Credentials
from addons.onepass import OnePass
from addons.quota import Quota
from addons.recorder import Recorder
from addons.refuse import log_error
from addons.router import Router
from addons.store import Store
from addons.upstream import UpstreamErrors

HOOKS = ("load", "configure", "running", "done", "request", "responseheaders", "response", "error")
_RESPONSE_HOOKS = ("responseheaders", "response", "error")


class Metrion:
    """Metrion's addons, one per concern, dispatched as one addon.

    mitmproxy dispatches every event to every addon it knows, each time inside its own
    `safecall` and coroutine, plus an `update` event after each flow event: about eight passes
    per request. Measured, that dispatch was most of Metrion's cost over the bare lean Master
    with seven addons; as one, each event costs one call that walks prepared lists of the
    children's bound hooks.

    Children are called in this order. The Store comes last so that its done() (the writer's
    final flush) runs after the Recorder's, which records the flows still in flight. A child
    whose hook returns a coroutine (Credentials, when it must reload) is awaited before the
    next child runs. Each child catches its own errors: one raising would skip the later ones.

    A request first goes to the one pass (addons/onepass.py), which takes the common one in a
    single function, as the four request hooks would leave it; the others go down the chain.
    """

    def __init__(self, data_dir: str | None = None) -> None:
        self.store = Store(data_dir=data_dir)
        router, credentials, body_check, quota = (Router(self.store), Credentials(self.store), BodyCheck(),
                                                  Quota(self.store))
        self.children = [router, credentials, body_check, quota, UpstreamErrors(self.store),
                         Recorder(self.store), self.store]
        # The common request in one pass; anything else through the children (addons/onepass.py).
        # It stands for exactly these four request hooks: with any other, it is off.
        self.one_pass = OnePass(router, credentials, quota, self.store)
        self._one_pass_stands_for = [router.request, credentials.request, body_check.request, quota.request]
        self.hooks: dict[str, list] = {}
        self._prepare()

    def add(self, child) -> None:
        """Another child (before the proxy starts), e.g. `metrion serve`'s listener banner."""
        self.children.append(child)
        self._prepare()

    def _prepare(self) -> None:
        self.hooks = {name: [getattr(c, name) for c in self.children if hasattr(c, name)] for name in HOOKS}
        self.one_pass_on = self.hooks["request"] == self._one_pass_stands_for
        # A response hook that only one child has (the Recorder's responseheaders and response)
        # is that child's own method here: mitmproxy calls it without going through _run.
        for name in _RESPONSE_HOOKS:
            if len(self.hooks[name]) == 1:
                setattr(self, name, self.hooks[name][0])
            else:
                self.__dict__.pop(name, None)  # back to the method below, which runs them all

    def _run(self, name: str, *args):
        hooks = self.hooks[name]
        for i, hook in enumerate(hooks):
            pending = hook(*args)
            if pending is not None:  # a coroutine: finish the chain once it is done
                return self._finish(pending, hooks[i + 1:], args)
        return None

    @staticmethod
    async def _finish(pending, rest, args) -> None:
        await pending
        for hook in rest:
            result = hook(*args)
            if result is not None:
                await result

    def load(self, loader):
        return self._run("load", loader)

    def configure(self, updated):
        return self._run("configure", updated)

    def running(self):
        return self._run("running")

    def done(self):
        return self._run("done")

    def request(self, flow):
        if self.one_pass_on and not (flow.response or flow.error or not flow.live):
            try:
                if self.one_pass.admit(flow):
                    return None
            except Exception as e:  # the chain decides (and fails closed on its own errors)
                log_error(flow, "the one pass", e)
        return self._run("request", flow)

    def responseheaders(self, flow):
        return self._run("responseheaders", flow)

    def response(self, flow):
        return self._run("response", flow)

    def error(self, flow):
        return self._run("error", flow)


addons = [Metrion()]
