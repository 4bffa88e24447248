"""The web dashboard (http/admin.py, http/timeline.py, http/static/): its JSON and SSE routes
with httpx against an in-process daemon on the fake plane, then the pages in a real browser
(Debian's Chromium driven by Playwright, no browser download) against the shared live daemon
(API keys on) and the fake one (no keys, hostile names).

Screenshots of each page go to the tests' temp dirs (`dashboard-*.png`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from sage_daemon.engines.base import ModelInfo
from sage_daemon.http.admin import CSP
from sage_daemon.http.timeline import histogram_quantile
from tests.conftest import KEY, LiveDaemon, run_sagectl
from tests.http import fakes
from tests.http.conftest import FakeDaemon

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


# ----------------------------------------------------------------------------- pure pieces


def test_histogram_quantile_interpolates_inside_buckets() -> None:
    bounds = [0.1, 0.5, 1.0, float("inf")]
    assert histogram_quantile(0.5, bounds, [0, 0, 0, 0]) is None
    assert histogram_quantile(0.5, bounds, [10, 10, 10, 10]) == pytest.approx(0.05)
    assert histogram_quantile(0.5, bounds, [0, 10, 20, 20]) == pytest.approx(0.5)
    assert histogram_quantile(0.75, bounds, [0, 10, 20, 20]) == pytest.approx(0.75)
    assert histogram_quantile(0.99, bounds, [0, 0, 0, 5]) == 1.0  # past the last finite bound: that bound


# ----------------------------------------------------------------------------- routes, no browser


async def read_events(lines: Any, count: int, timeout: float) -> list[tuple[str, Any]]:
    """The next `count` events of an SSE response (`lines`: its aiter_lines(), kept across calls) as (event, data)."""
    out: list[tuple[str, Any]] = []
    event = "message"
    with trio.fail_after(timeout):
        async for line in lines:
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                out.append((event, json.loads(line.split(":", 1)[1])))
                event = "message"
                if len(out) == count:
                    break
    return out


async def test_pages_files_and_data_routes_without_keys(fake: FakeDaemon) -> None:
    async with fake.client() as http:
        for path in ("/", "/ui", "/ui/"):
            page = await http.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert page.headers["content-security-policy"] == CSP
            assert page.headers["x-content-type-options"] == "nosniff"
            assert '<script type="module" src="/ui/static/app.js">' in page.text and "<script>" not in page.text  # no inline script
        script = await http.get("/ui/static/app.js")
        assert script.headers["content-type"].startswith("text/javascript") and "export function mount" in script.text
        assert "MIT" in (await http.get("/ui/static/vendor/uplot/LICENSE")).text
        assert (await http.get("/ui/static/../admin.py")).status_code == 404
        again = await http.get("/ui/static/app.js", headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304

        overview = (await http.get("/sage/v1/overview")).json()
        assert overview["status"]["state"] == "serving" and overview["policy"] == "hybrid"
        assert overview["node"]["cpu_count"] >= 1 and "fifo" in overview["policies"]
        models = (await http.get("/sage/v1/models")).json()["models"]
        assert [m["id"] for m in models] == ["chatty", "base", "emb"]
        assert (await http.get("/sage/v1/queue")).json() == {"policy": "hybrid", "entries": [], "running": {}}
        assert (await http.get("/sage/v1/session")).json()["keys"] is False

        # The sampler takes a point a second; chat traffic shows as rates.
        r = await http.post("/v1/chat/completions", json={"model": "chatty", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        await trio.sleep(1.3)
        tick = (await http.get("/sage/v1/timeline")).json()
        assert tick["points"] and tick["state"]["policy"] == "hybrid"
        assert {m["id"] for m in tick["state"]["models"]} == {"chatty", "base", "emb"}
        assert tick["state"]["totals"]["requests"] >= 1 and tick["state"]["totals"]["tokens"] >= 5
        point = tick["points"][-1]
        for key in ("t", "waiting", "running_llm", "gate_llm", "gate_embedding", "embedding_batch", "requests_s", "tokens_s", "embedding_texts_s", "errors_s", "ttft_p50", "ttft_p95", "embedding_p50", "embedding_p95"):
            assert key in point
        assert any(p["ttft_p50"] is not None for p in tick["points"])  # the chat's first token, in the 10 s window

        # A page elsewhere reaching 127.0.0.1 through a DNS name of its own (rebinding) is refused.
        refused = await http.get("/sage/v1/overview", headers={"Host": "attacker.example:8888"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "host_not_allowed"
        # Actions take JSON only, so a cross-site form cannot post them.
        form = await http.post("/sage/v1/policy", content=b"name=fifo", headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert form.status_code == 415


async def test_with_keys_only_the_login_page_and_every_data_route_needs_the_key(make_fake_daemon: Any) -> None:
    daemon = await make_fake_daemon(("http.api_keys", ["sekrit"]))
    async with daemon.client() as http:
        page = await http.get("/")
        assert page.status_code == 200 and 'id="login-form"' in page.text and "app.js" not in page.text
        assert (await http.get("/ui/static/login.js")).status_code == 200  # code, no data: public
        for path in ("/sage/v1/session", "/sage/v1/overview", "/sage/v1/models", "/sage/v1/timeline", "/sage/v1/timeline/stream", "/sage/v1/jobs"):
            r = await http.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == "Bearer"
        assert (await http.post("/sage/v1/policy", json={"name": "fifo"})).status_code == 401
        assert (await http.get("/sage/v1/overview", headers={"Authorization": "Bearer wrong"})).status_code == 401
        good = {"Authorization": "Bearer sekrit"}
        assert (await http.get("/sage/v1/session", headers=good)).json() == {"keys": True, "role": "admin", "interval_s": 1.0}
        # With keys, any Host may ask (the key is the check).
        assert (await http.get("/sage/v1/models", headers={**good, "Host": "sage.lan"})).status_code == 200


async def test_dashboard_off(make_fake_daemon: Any) -> None:
    daemon = await make_fake_daemon(("http.dashboard", False))
    async with daemon.client() as http:
        for path in ("/", "/ui", "/ui/static/app.js", "/sage/v1/overview"):
            assert (await http.get(path)).status_code == 404, path
        assert (await http.get("/v1/models")).status_code == 200


async def test_policy_switch_arrives_on_the_stream_within_two_seconds(fake: FakeDaemon) -> None:
    async with fake.client() as http, http.stream("GET", "/sage/v1/timeline/stream") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        [(event, first)] = await read_events(lines, 1, timeout=3)
        assert event == "tick" and first["state"]["policy"] == "hybrid"
        switched = await http.post("/sage/v1/policy", json={"name": "fifo"})
        assert switched.json() == {"policy": "fifo", "previous": "hybrid"}
        started = time.monotonic()
        with trio.fail_after(2):
            while True:
                [(_, tick)] = await read_events(lines, 1, timeout=2)
                if tick["state"]["policy"] == "fifo":
                    break
        assert time.monotonic() - started < 2
        assert fake.control.policy == "fifo"
        bad = await http.post("/sage/v1/policy", json={"name": "fastest"})
        assert bad.status_code == 400 and "use one of" in bad.json()["error"]["message"]


async def test_jobs_submit_watch_logs_cancel_retry(fake: FakeDaemon) -> None:
    items = [{"id": f"i{n}", "text": f"item {n}"} for n in range(300)]
    spec = {"name": HOSTILE, "stages": [{"op": "from_items", "items": items}, {"op": "map", "fn": "tests.jobs.helpers:slow"}, {"op": "collect"}]}
    async with fake.client() as http:
        job = (await http.post("/sage/v1/jobs", json={"spec": spec})).json()
        assert job["name"] == HOSTILE and job["state"] in ("queued", "running")
        async with http.stream("GET", f"/sage/v1/jobs/{job['id']}/watch?interval_s=0.1") as watch:
            events = await read_events(watch.aiter_lines(), 2, timeout=10)
        assert [e for e, _ in events] == ["job", "job"] and events[0][1]["job"]["id"] == job["id"]
        assert [s["ops"] for s in events[-1][1]["stages"]]

        cancelled = (await http.post(f"/sage/v1/jobs/{job['id']}/cancel", json={})).json()
        assert cancelled["state"] == "cancelled"
        assert (await http.post(f"/sage/v1/jobs/{job['id']}/cancel", json={})).status_code == 409  # already over
        with trio.fail_after(10):  # without follow, the logs end at once with the job's summary
            text = (await http.get(f"/sage/v1/jobs/{job['id']}/logs")).text
        assert "event: log" in text and "event: end" in text and "cancelled" in text

        retried = (await http.post(f"/sage/v1/jobs/{job['id']}/retry", json={})).json()
        assert retried["id"] == job["id"] and retried["attempt"] == 2
        listed = (await http.get("/sage/v1/jobs")).json()["jobs"]
        assert listed[0]["id"] == job["id"]
        (await http.post(f"/sage/v1/jobs/{job['id']}/cancel", json={})).raise_for_status()

        missing = await http.get("/sage/v1/jobs/9999/watch")
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"  # a status, not a stream
        assert (await http.get("/sage/v1/collections")).json() == {"collections": []}
        bad = await http.post("/sage/v1/jobs", json={"spec": {"stages": [{"op": "nope"}]}})
        assert bad.status_code == 400


# ----------------------------------------------------------------------------- in a browser

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no {CHROMIUM}: install Debian's chromium (apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium (apt-get install chromium; .ci/run does)")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


class Page:
    """A browser tab on the dashboard that fails the test on a script error or a CSP violation."""

    def __init__(self, browser: Any, url: str, shots: Path, key: str | None = None):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        if key:  # as after the login form: the key in this tab's session storage
            self.context.add_init_script(f"sessionStorage.setItem('sage.apiKey', {json.dumps(key)})")
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.url = url
        self.shots = shots
        self.problems: list[str] = []
        self.allowed: list[str] = []  # problems a test expects (the console events arrive when they do)
        self.page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)

    def open(self, tab: str = "") -> Any:
        self.page.goto(self.url + "/" + (f"#{tab}" if tab else ""))
        return self.page

    def shot(self, name: str) -> Path:
        path = self.shots / f"dashboard-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()
        problems = [p for p in self.problems if not any(allowed in p for allowed in self.allowed)]
        assert not problems, problems


@pytest.fixture
def tab(browser: Any, live: LiveDaemon, tmp_path: Path) -> Iterator[Page]:
    page = Page(browser, live.url, tmp_path, key=KEY)
    yield page
    page.close()


@needs_chromium
def test_login_form_then_the_overview_with_the_real_models(browser: Any, live: LiveDaemon, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    tab = Page(browser, live.url, tmp_path)
    page = tab.open()
    page.wait_for_selector("#login-form")
    body = page.inner_text("body")
    assert "smollm2" not in body and "minilm" not in body and page.query_selector("#page") is None  # no data before the key
    tab.shot("login")
    tab.allowed.append("status of 401")  # the wrong key's answer (Chromium logs it), as wanted
    page.fill("#login-key", "not-the-key")
    page.click("#login-submit")
    # Locator assertions, not wait_for_function: a string predicate is eval'd in the page, which
    # the dashboard's CSP forbids once the first check fails and polling starts.
    expect(page.locator("#login-error")).not_to_be_empty(timeout=30_000)
    assert page.query_selector("#page") is None
    page.fill("#login-key", KEY)
    page.click("#login-submit")
    page.wait_for_selector("#overview-models [data-model='minilm']")
    listed = page.eval_on_selector_all("#overview-models [data-model]", "els => els.map(e => e.dataset.model)")
    assert listed == ["smollm2", "gemma3-270m", "minilm"]
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=30_000)
    assert page.inner_text("[data-field='state']") == "serving"
    assert page.evaluate("sessionStorage.getItem('sage.apiKey')") == KEY
    tab.shot("overview")
    page.click("nav a[data-page='models']")
    page.wait_for_selector("tr[data-key='smollm2']")
    tab.shot("models")
    page.click("nav a[data-page='queue']")
    page.wait_for_selector(".chart canvas")
    tab.shot("queue")
    tab.close()


@needs_chromium
def test_a_playground_chat_streams_tokens_into_the_page(tab: Page) -> None:
    page = tab.open("playground")
    page.wait_for_selector("#chat-model option[value='smollm2']", state="attached")
    page.select_option("#chat-model", "smollm2")
    page.fill("#chat-max-tokens", "24")
    page.fill("#chat-input", "What is the capital of France?")
    page.click("#chat-send")
    page.wait_for_selector(".message.assistant[data-done='true']", timeout=60_000)
    message = page.query_selector(".message.assistant")
    assert int(message.get_attribute("data-chunks")) > 1  # streamed: many deltas, not one reply
    assert message.query_selector(".text").inner_text().strip()
    assert "tokens/s" in page.inner_text("#chat-stats")
    tab.shot("playground")


@needs_chromium
def test_a_job_started_from_the_page_reaches_100_percent(tab: Page) -> None:
    from playwright.sync_api import expect

    page = tab.open("jobs")
    page.wait_for_selector("#job-form")
    items = ", ".join(f'{{ id = "n{n}", text = "note number {n}" }}' for n in range(12))
    page.fill("#job-toml", f'name = "dashboard-embed"\n\n[[stages]]\nop = "from_items"\nitems = [{items}]\n\n[[stages]]\nop = "embed"\nmodel = "minilm"\n\n[[stages]]\nop = "collect"\n')
    page.click("#job-form button[type='submit']")
    page.wait_for_selector("#job-progress[data-percent='100']", timeout=60_000)
    assert "succeeded" in page.inner_text("#job-state")
    expect(page.locator("#job-logs")).to_contain_text("succeeded", timeout=30_000)
    assert page.eval_on_selector_all("#job-detail tbody tr progress", "els => els.every(e => e.value === 100)")
    tab.shot("jobs")


@needs_chromium
def test_switching_the_policy_is_what_sagectl_sees(tab: Page, live: LiveDaemon) -> None:
    before = run_sagectl("policy", "show", socket_path=live.process.socket).stdout.strip()
    target = "fifo" if before != "fifo" else "priority"
    page = tab.open("overview")
    page.wait_for_selector(f".policy-select[data-current='{before}']")
    try:
        page.select_option(".policy-select", target)
        page.wait_for_selector(f".policy-select[data-current='{target}']")
        assert run_sagectl("policy", "show", socket_path=live.process.socket).stdout.strip() == target
    finally:
        run_sagectl("policy", "set", before, socket_path=live.process.socket)
    page.wait_for_selector(f".policy-select[data-current='{before}']")  # and back, through the stream


class HostilePlane(fakes.FakeControlPlane):
    """A plane whose model names and reasons are markup: the page must show them as text."""

    def list_models(self) -> list[ModelInfo]:
        return [*fakes.MODELS, ModelInfo(id=HOSTILE, kind="llm", backend="fake", state="ready", reason=HOSTILE, slots_total=2)]


async def test_names_with_markup_are_shown_as_text(clean_env: Path, nursery: trio.Nursery, tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium (apt-get install chromium; .ci/run does)")
    from sage_daemon.core.config import load_config
    from sage_daemon.daemon import Daemon
    from tests.conftest import isolated_overrides

    overrides = isolated_overrides(clean_env / "hostile")
    instance = Daemon(load_config(None, overrides), None, overrides, plane_factory=lambda *args: HostilePlane(args[3]))
    await nursery.start(instance.run)
    try:
        await _drive_hostile(instance.services.http_url, tmp_path)
    finally:
        nursery.cancel_scope.cancel()


async def _drive_hostile(url: str, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        job = (await http.post("/sage/v1/jobs", json={"spec": {"name": HOSTILE, "stages": [{"op": "from_items", "items": [{"id": HOSTILE}]}, {"op": "collect"}]}})).json()

    def drive() -> dict[str, Any]:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                tab = Page(chromium, url, tmp_path)
                page = tab.open("models")
                page.wait_for_selector("tr[data-key='chatty']")
                row = page.wait_for_selector("tbody tr:nth-child(4)")
                seen = {"model": row.query_selector("td").inner_text(), "reason": row.query_selector_all("td")[8].inner_text()}
                tab.shot("hostile-models")
                page.click("nav a[data-page='jobs']")
                page.wait_for_selector(f"tr[data-key='{job['id']}']")
                seen["job"] = page.query_selector(f"tr[data-key='{job['id']}'] td:nth-child(2)").inner_text()
                page.click(f"tr[data-key='{job['id']}'] td:nth-child(2)")
                page.wait_for_selector("#job-progress[data-percent='100']")
                seen["title"] = page.inner_text("#job-detail h2")
                seen["results"] = page.inner_text("#job-results")
                tab.shot("hostile-jobs")
                seen["pwned"] = page.evaluate("window.__pwned === undefined ? null : window.__pwned")
                seen["scripts"] = page.evaluate("[...document.scripts].map(s => s.src)")
                seen["images"] = page.evaluate("document.images.length")
                tab.close()
                return seen
            finally:
                chromium.close()

    seen = await trio.to_thread.run_sync(drive)
    assert seen["model"] == HOSTILE and seen["reason"] == HOSTILE and seen["job"] == HOSTILE
    assert HOSTILE in seen["title"] and "__pwned" in seen["results"]
    assert seen["pwned"] is None and seen["images"] == 0
    assert all(src.endswith("/ui/static/app.js") for src in seen["scripts"])
