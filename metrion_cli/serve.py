"""`metrion serve`: Metrion's addons in a lean mitmproxy Master.

mitmdump loads about forty addons that every hook of every flow passes through; Metrion needs
five of mitmproxy's core ones. Measured (DESIGN.md): ~1.75x bare mitmdump's requests/s. This is
the one module of metrion_cli that imports `addons`, and it does so inside `run()`.
"""

import asyncio
import dataclasses
import gc
import inspect
import signal
import sys
import types
from dataclasses import dataclass, field

DEFAULT_PORTS = {"openai": 8101, "anthropic": 8102, "gemini": 8103, "mistral": 8104, "xai": 8105}


@dataclass
class ServeConfig:
    data_dir: str
    host: str = "127.0.0.1"
    ports: dict[str, int | None] = field(default_factory=dict)  # provider -> port; None = off
    upstreams: dict[str, str] = field(default_factory=dict)   # provider -> upstream URL
    extra_options: dict = field(default_factory=dict)         # any other mitmproxy option
    set_specs: list[str] = field(default_factory=list)        # "name=value", as mitmdump --set


def proxy_options(config: ServeConfig, providers: list[str], defaults: dict[str, str]) -> dict:
    """The mitmproxy options for this configuration: one reverse listener per provider."""
    modes = []
    for name in providers:
        port = config.ports.get(name, DEFAULT_PORTS.get(name))
        if port is None:
            continue
        upstream = config.upstreams.get(name, defaults[name])
        modes.append(f"reverse:{upstream}@{config.host}:{port}")
    return {
        "mode": modes,
        # Refusals (401, 429) must not open an upstream connection first.
        "connection_strategy": "lazy",
        "metrion_data_dir": config.data_dir,
        "metrion_upstream": [f"{k}={v}" for k, v in config.upstreams.items()],
        "termlog_verbosity": "info",
        **config.extra_options,
    }


class Announce:
    """Prints one line per listener once all of them accept connections."""

    def __init__(self, upstream_of: dict[str, str]) -> None:
        self.upstream_of = upstream_of

    def running(self) -> None:
        from mitmproxy import ctx
        from mitmproxy.proxy.mode_specs import ReverseMode

        for server in ctx.master.addons.get("proxyserver").servers:
            if not isinstance(server.mode, ReverseMode):
                continue
            provider = self.upstream_of.get(server.mode.data.rstrip("/").lower(), "?")
            # A listener may hold a TCP and a UDP socket on the same address: one line each.
            for host, port in dict.fromkeys((a[0], a[1]) for a in server.listen_addrs):
                print(f"metrion: {provider} listening on http://{host}:{port} -> {server.mode.data}",
                      flush=True)
        print("metrion: ready", flush=True)


class FreezeStartupObjects:
    """Once the proxy runs, moves every object made so far out of the garbage collector's sight.

    mitmproxy leaves reference cycles behind every request, so full collections come every few
    thousand requests, and each one walked all ~90,000 objects of the loaded modules and options.
    Measured under load: ~50 ms per full collection (a stall every request in flight waits out),
    ~25 µs per request on average; frozen, ~2.5 ms. Objects made at start-up live as long as the
    process, so nothing is lost by no longer walking them (gc.freeze, meant for this)."""

    def running(self) -> None:
        gc.collect()
        gc.freeze()


class FlowHookDispatch:
    """mitmproxy's `handle_lifecycle` (every hook of every flow, plus an `update` after each)
    through each event's hook functions, looked up once, instead of asking every addon for it.

    mitmproxy's own loop walks the whole chain for every event of every flow, each addon inside
    a `safecall` context manager and two generators, whether it has the hook or not: a lean
    Master spent ~85 µs of its ~620 µs per request there (measured: four events and four
    updates, six addons, none of which has a flow hook), and every added addon ~16 µs more.

    Same order and error handling as mitmproxy's loop: an error is logged by mitmproxy's
    `safecall` and the next addon runs (an addon's sub-addons are skipped for that event, as
    there); `AddonHalt` stops the event; `OptionsError` goes up. The lists are rebuilt when an
    addon is registered or removed. Unlike mitmproxy, a hook set on an addon after its first
    event, or a sub-addon put in an `addons` list without `register()`, is not seen until an addon is
    next registered or removed; the lean Master's addons do neither. Installed in `run_lean_master`, so the benchmark's lean
    Master (the ceiling Metrion is compared with) has it too.
    """

    def __init__(self, manager) -> None:
        from mitmproxy import addonmanager, exceptions, flow, hooks

        self.manager = manager
        self._traverse = addonmanager.traverse
        self._safecall = addonmanager.safecall
        self._halt = exceptions.AddonHalt
        self._not_callable = exceptions.AddonManagerError
        self._flow_type = flow.Flow
        self._update_hook = hooks.UpdateHook
        self._hooks: dict[str, list] = {}
        self._built_for: tuple = ()
        self._arg_names: dict[type, list[str]] = {}

    def install(self) -> "FlowHookDispatch":
        self.manager.handle_lifecycle = self.handle_lifecycle
        return self

    def hooks(self, name: str) -> list[tuple[int, object]]:
        """(top-level addon's index, hook function) for event `name`, in chain order."""
        manager = self.manager
        chain = manager.chain
        built_for = self._built_for
        # add() appends to the chain, remove() replaces it, register() of a sub-addon grows
        # the lookup: any of them starts the lists afresh.
        if not (built_for and built_for[0] is chain and built_for[1] == len(chain)
                and built_for[2] == len(manager.lookup)):
            self._hooks = {}
            self._built_for = (chain, len(chain), len(manager.lookup))
        found = self._hooks.get(name)
        if found is None:
            found = []
            for index, top in enumerate(chain):
                for addon in self._traverse([top]):
                    try:
                        func = getattr(addon, name, None)
                    except Exception as e:  # a property that raises: mitmproxy logs it per event
                        found.append((index, _raiser(e)))
                        break
                    if not func or isinstance(func, types.ModuleType):
                        continue  # mitmproxy skips a module imported under a hook's name, too
                    if not callable(func):
                        found.append((index, _raiser(
                            self._not_callable(f"Addon handler {name} ({addon}) not callable"))))
                        break
                    found.append((index, func))
            self._hooks[name] = found
        return found

    async def handle_lifecycle(self, event) -> None:
        funcs = self.hooks(event.name)
        if funcs:
            pending = self._call(funcs, self._args(event))
            if pending is not None:
                await pending
        updates = self.hooks("update")
        if updates:
            message = self._args(event)[0]
            if isinstance(message, self._flow_type):
                pending = self._call(updates, self._args(self._update_hook([message])))
                if pending is not None:
                    await pending

    def _args(self, event) -> list:
        """`event.args()`, with the field names looked up once per event type (mitmproxy asks
        `dataclasses.fields()` on every call)."""
        names = self._arg_names.get(type(event))
        if names is None:
            names = self._arg_names[type(event)] = [f.name for f in dataclasses.fields(event)]
        return [getattr(event, name) for name in names]

    def _call(self, funcs: list, args: list, start: int = 0, failed: int = -1):
        """Calls the hooks from `start` on, synchronously: no coroutine per event for hooks
        that return nothing (most). When one returns an awaitable, returns a coroutine that
        awaits it and goes on with the rest."""
        # failed: the top-level addon whose hook raised; its sub-addons' hooks are skipped.
        for at in range(start, len(funcs)):
            index, func = funcs[at]
            if index == failed:
                continue
            try:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    return self._finish(result, funcs, args, at, index)
            except self._halt:
                return None
            except Exception:
                failed = index
                self._log_error()
        return None

    async def _finish(self, awaitable, funcs: list, args: list, at: int, index: int) -> None:
        failed = -1
        try:
            await awaitable
        except self._halt:
            return
        except Exception:
            failed = index
            self._log_error()
        pending = self._call(funcs, args, at + 1, failed)
        if pending is not None:
            await pending

    def _log_error(self) -> None:
        # Logged by mitmproxy's own safecall (which lets OptionsError through, as mitmproxy's
        # loop does); entered only on an error, as it costs ~1.5 µs a call.
        with self._safecall():
            raise


def _raiser(error: Exception):
    """A stand-in hook that raises `error` each time, as mitmproxy's lookup would."""

    def hook(*args):
        raise error

    return hook


# On SIGTERM, how long requests in flight may take to finish before Metrion stops anyway.
DRAIN_SECONDS = 10.0


async def run_lean_master(settings: dict, extra_addons: list, set_specs: list[str] = (),
                          drain=None) -> int:
    """mitmproxy's five core addons plus `extra_addons`, with `settings` applied; runs until
    SIGTERM/SIGINT. Without extra addons it is the ceiling the benchmark compares against.

    `drain` (optional) makes the stop graceful: `drain.begin()` is called first, the listeners
    close, and the proxy stops once `drain.finished()` or after DRAIN_SECONDS."""
    from mitmproxy import exceptions, master, options
    from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig

    opts = options.Options()
    proxy = master.Master(opts, with_termlog=True)
    FlowHookDispatch(proxy.addons).install()
    proxy.addons.add(
        core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(repeat_errors_on_stderr=True), *extra_addons, FreezeStartupObjects(),
    )
    try:
        opts.update(**settings)
        if set_specs:
            opts.set(*set_specs)
    except exceptions.OptionsError as e:
        print(f"metrion serve: {e}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    async def stop_gracefully() -> None:
        drain.begin()
        await proxy.addons.get("proxyserver").servers.update([])
        deadline = loop.time() + DRAIN_SECONDS
        while not drain.finished() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        proxy.shutdown()

    def on_signal() -> None:
        if drain is None or stopping:  # a second signal: stop now
            proxy.shutdown()
        else:
            stopping.append(loop.create_task(stop_gracefully()))

    # mitmdump wires signals in mitmproxy/tools/main.py, not in Master: without this, SIGTERM
    # would kill the process before done() flushes the queued rows.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    await proxy.run()
    # Keep-alive client connections are cancelled as the loop closes; asyncio would print each
    # one as an "exception in callback" although nothing went wrong.
    loop.set_exception_handler(_quiet_cancellations)
    return 0


async def _run(config: ServeConfig) -> int:
    from addons import providers
    from addons.metrion import Metrion
    from addons.router import parse_upstreams

    upstreams = parse_upstreams([f"{k}={v}" for k, v in config.upstreams.items()])
    settings = proxy_options(config, list(providers.PROVIDERS), upstreams)
    settings["confdir"] = str(config_confdir(config))
    announce = Announce({v.rstrip("/").lower(): k for k, v in upstreams.items()})
    metrion = Metrion(data_dir=config.data_dir)
    metrion.add(announce)
    return await run_lean_master(settings, [metrion], config.set_specs, Drain(metrion.store))


class Drain:
    """Graceful stop for Metrion: turn new requests away, let the recorded ones finish."""

    def __init__(self, store) -> None:
        self.store = store

    def begin(self) -> None:
        self.store.closing = True

    def finished(self) -> bool:
        return not self.store.inflight


def _quiet_cancellations(loop, context) -> None:
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


def config_confdir(config: ServeConfig):
    from .paths import resolve

    return resolve(config.data_dir).confdir


def run(config: ServeConfig) -> int:
    return run_until_stopped(_run(config))


def run_until_stopped(main) -> int:
    try:
        return asyncio.run(main)
    except SystemExit as e:  # errorcheck exits when start-up logged an error (a port in use)
        return int(e.code or 0)
