"""Many clients at once: 500 slow streams held open together, then a long run of small
requests; the proxy keeps answering and gives its memory back."""

import asyncio
import time

import httpx2 as httpx

from metrion_cli.fakes import Behaviour

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(next(l for l in status if l.startswith("VmRSS:")).split()[1]) / 1024


async def hold_streams(url: str, token: str, n: int) -> list[int]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        async def one():
            async with http.stream("POST", url + "/v1/chat/completions", json={**BODY, "stream": True},
                                   headers={"authorization": f"Bearer {token}"}) as r:
                async for _ in r.aiter_raw():
                    pass
                return r.status_code
        return await asyncio.gather(*(one() for _ in range(n)))


async def small_requests(url: str, token: str, total: int, concurrency: int = 16) -> int:
    ok = 0
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as http:
        async def worker(count):
            nonlocal ok
            for _ in range(count):
                r = await http.post(url + "/v1/chat/completions", json=BODY,
                                    headers={"authorization": f"Bearer {token}"})
                ok += r.status_code == 200
        await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency)))
    return ok


def test_500_slow_streams_at_once_then_a_long_run(acme, run_cli, fake_openai, start_gateway):
    run_cli("quota", "rpm", "acme", "none")
    run_cli("accounts", "plan", "acme", "pro")
    gateway = start_gateway({"openai": fake_openai.url})
    pid = gateway.proc.pid
    # Warm-up: every code path once, at small scale (imports, caches, pools).
    asyncio.run(small_requests(gateway.url(), acme.token, 320))
    asyncio.run(hold_streams(gateway.url(), acme.token, 20))
    start_rss = rss_mb(pid)

    fake_openai.behaviour = Behaviour(chunk_delay=0.5, chunks=6)
    started = time.monotonic()
    streams = asyncio.run(hold_streams(gateway.url(), acme.token, 500))
    assert streams == [200] * 500
    # all 500 were open together: 6 chunks half a second apart each, done in far less than 500 x 3 s
    assert time.monotonic() - started < 30

    fake_openai.behaviour = Behaviour()
    fake_openai.record = False
    total = 100_000
    assert asyncio.run(small_requests(gateway.url(), acme.token, total)) == total
    end_rss = rss_mb(pid)
    print(f"proxy RSS: {start_rss:.0f} MB after warm-up, {end_rss:.0f} MB after 500 streams and {total} requests")
    assert end_rss - start_rss < 20
    gateway.wait_rows(320 + 20 + 500 + total, timeout=60)
    assert gateway.count_rows() == 320 + 20 + 500 + total
