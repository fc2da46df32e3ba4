"""20 MB each way: through whole, with bounded memory, and the usage still read."""

import base64
import hashlib
import os

import httpx2 as httpx


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(l for l in status if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_20_mb_request_and_response(gateway, acme, fake_openai):
    headers = {"authorization": f"Bearer {acme.token}", "content-type": "application/json"}
    image = base64.b64encode(os.urandom(15 * 1024 * 1024)).decode()  # 20 MB of base64
    body = ('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [{"type": "image_url", '
            f'"image_url": {{"url": "data:image/png;base64,{image}"}}}}]}}]}}').encode()
    before = peak_rss_mb(gateway.proc.pid)
    with httpx.Client(timeout=60) as http:
        r = http.post(gateway.url() + "/v1/chat/completions", content=body, headers=headers)
        assert r.status_code == 200
        assert hashlib.sha256(fake_openai.received[-1].body).digest() == hashlib.sha256(body).digest()

        big = http.post(gateway.url() + "/v1/embeddings", headers=headers,
                        json={"model": "text-embedding-3-small", "input": ["x"] * 2000, "dimensions": 2000})
        assert big.status_code == 200
    sent = fake_openai.sent[-1]
    assert len(sent.body) > 20 * 1024 * 1024 and big.content == sent.body
    growth = peak_rss_mb(gateway.proc.pid) - before
    print(f"proxy peak RSS grew {growth:.0f} MB for a {len(body) >> 20} MB request and a "
          f"{len(sent.body) >> 20} MB response")
    assert growth < 160
    rows = gateway.wait_rows(2)
    assert rows[0]["request_bytes"] == len(body)
    assert rows[1]["response_bytes"] == len(sent.body)
    assert rows[1]["input_tokens"] == sent.usage["prompt_tokens"] and rows[1]["model"] == sent.model
