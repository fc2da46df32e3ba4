import click

from .. import PROVIDER_NAMES
from ..serve import DEFAULT_PORTS


def parse_pairs(values, convert, what):
    result = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or name not in PROVIDER_NAMES:
            raise click.BadParameter(f"expected PROVIDER={what} with PROVIDER one of "
                                     f"{', '.join(PROVIDER_NAMES)}, got {value!r}")
        try:
            result[name] = convert(rest)
        except ValueError:
            raise click.BadParameter(f"bad {what} in {value!r}") from None
    return result


def port_or_off(value: str) -> int | None:
    return None if value == "off" else int(value)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the listeners bind to.")
@click.option("--port", "ports", multiple=True, metavar="PROVIDER=PORT|off",
              help="Listen port of a provider's reverse listener, or off (repeatable). Defaults: "
              + ", ".join(f"{k} {v}" for k, v in DEFAULT_PORTS.items()) + ".")
@click.option("--upstream", "upstreams", multiple=True, metavar="PROVIDER=URL",
              help="Send a provider's requests here instead of its public API (repeatable).")
@click.option("--stream-usage", is_flag=True,
              help="Ask OpenAI-style chat streams for usage when the client did not (adds "
              "stream_options.include_usage) and hide the extra usage chunk from the client.")
@click.option("--anthropic-version", metavar="VERSION",
              help="The anthropic-version sent upstream (default 2023-06-01).")
@click.option("--set", "set_specs", multiple=True, metavar="OPTION=VALUE",
              help="Any mitmproxy or metrion_* option, as mitmdump's --set "
              "(e.g. metrion_default_rpm=600).")
@click.pass_obj
def serve(paths, host, ports, upstreams, stream_usage, anthropic_version, set_specs):
    """Run the gateway: one reverse-proxy listener per provider.

    \b
    Example:
      metrion serve --port openai=9101 --upstream openai=http://127.0.0.1:9001
    """
    from ..serve import ServeConfig, run
    from .demo import retire_demo

    retire_demo(paths)
    config = ServeConfig(
        data_dir=str(paths.data_dir), host=host, ports=parse_pairs(ports, port_or_off, "PORT"),
        upstreams=parse_pairs(upstreams, str, "URL"),
        extra_options={"metrion_stream_usage": stream_usage,
                       **({"metrion_anthropic_version": anthropic_version} if anthropic_version else {})},
        set_specs=list(set_specs))
    raise SystemExit(run(config))


def register(cli):
    cli.add_command(serve)
