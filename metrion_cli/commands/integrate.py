import click

from .. import PROVIDER_NAMES
from ..serve import DEFAULT_PORTS

# What a user pastes: the SDK, where its base URL goes, and the env vars it reads.
SNIPPETS = {
    "openai": ("openai", "OPENAI_BASE_URL={base}/v1\nOPENAI_API_KEY={token}", """\
from openai import OpenAI
client = OpenAI(api_key="{token}", base_url="{base}/v1")
reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "Hello"}}])
print(reply.choices[0].message.content)"""),
    "anthropic": ("anthropic", "ANTHROPIC_BASE_URL={base}\nANTHROPIC_API_KEY={token}", """\
from anthropic import Anthropic
client = Anthropic(api_key="{token}", base_url="{base}")
reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=256, messages=[{{"role": "user", "content": "Hello"}}])
print(reply.content[0].text)"""),
    "gemini": ("google-genai", "GOOGLE_GEMINI_BASE_URL={base}\nGEMINI_API_KEY={token}", """\
from google import genai
client = genai.Client(api_key="{token}", http_options=genai.types.HttpOptions(base_url="{base}"))
print(client.models.generate_content(model="gemini-2.5-flash", contents="Hello").text)"""),
    "mistral": ("mistralai", "MISTRAL_API_KEY={token}    # the SDK has no base-URL variable: pass server_url", """\
from mistralai.client import Mistral
client = Mistral(api_key="{token}", server_url="{base}")
reply = client.chat.complete(model="mistral-small-latest", messages=[{{"role": "user", "content": "Hello"}}])
print(reply.choices[0].message.content)"""),
    "xai": ("openai", "XAI_API_KEY={token}    # read it yourself: the openai SDK does not", """\
import os
from openai import OpenAI
client = OpenAI(api_key=os.environ["XAI_API_KEY"], base_url="{base}/v1")
reply = client.chat.completions.create(model="grok-4", messages=[{{"role": "user", "content": "Hello"}}])
print(reply.choices[0].message.content)"""),
}


@click.command()
@click.argument("provider", type=click.Choice(PROVIDER_NAMES))
@click.option("--host", default="127.0.0.1", show_default=True, help="Where Metrion listens.")
@click.option("--port", type=int, help="The provider's listen port, if not the default.")
@click.option("--token", default="mtr_YOUR_TOKEN", show_default=True,
              help="Put a token in the snippet (see `metrion tokens create`).")
def integrate(provider, host, port, token):
    """Print what to paste to point PROVIDER's official SDK at Metrion.

    \b
    Example:
      metrion integrate anthropic
    """
    package, env, code = SNIPPETS[provider]
    base = f"http://{host}:{port or DEFAULT_PORTS[provider]}"
    click.echo(f"# pip install {package}\n\n# environment variables:\n{env.format(base=base, token=token)}\n")
    click.echo(f"# or in code:\n{code.format(base=base, token=token)}")


def register(cli):
    cli.add_command(integrate)
