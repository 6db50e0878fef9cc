"""What an operator sees, in a real browser: headless Chromium (Debian's package) driven by Playwright,
on the Prefect UI of the session's server and on the Dask dashboard of its cluster. Skipped where the
browser or Playwright is missing (`scripts/setup.sh` installs both where it can)."""

import os
import shutil

import pytest

from storage import RenderStore

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REQUIRED = bool(os.environ.get("SUPERGEN_REQUIRE_BROWSER"))  # CI: a missing browser fails, never skips
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM) and not REQUIRED,
                                 reason="no chromium (Debian package: chromium; scripts/browser.sh)")]
# the flags a sandboxed root process needs, and no calls home on a closed network
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]
SPEC = dict(prompt="a red circle moving", model="tiny", width=128, height=128, frames=5, steps=5, refine_steps=3,
            cache="region", cache_threshold=5.0, cache_warmup=1, checkpoint_every=0, seed=4)
SHOTS = os.environ.get("SUPERGEN_SCREENSHOTS")  # a folder: also save the pages as the docs show them


@pytest.fixture(scope="module")
def browser():
    if REQUIRED:
        import playwright.sync_api as sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def rendered(prefect_api, dask_cluster, tmp_path_factory):
    """One render through the flow; its store and its artifacts on the server, by description."""
    import functools
    import http.server
    import threading

    from prefect.client.orchestration import get_client

    from flows.render import render

    root = tmp_path_factory.mktemp("r")  # served over http, as an operator's gateway serves a bucket
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = render(spec=SPEC, store_url=str(root / "s"), cluster=dask_cluster,
                 preview_url=f"http://127.0.0.1:{server.server_address[1]}/s")
    with get_client(sync_client=True) as c:
        every = c.read_artifacts()
    run = next(a.flow_run_id for a in every if a.description == f"refinement of {url}")  # this render's run
    arts = [a for a in every if a.flow_run_id == run]
    yield RenderStore.open(url), arts, prefect_api["PREFECT_API_URL"].removesuffix("/api")
    server.shutdown()


def _shot(page, name):
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, name))


def test_the_flow_runs_page_shows_its_artifacts_and_they_render(rendered, browser):
    store, arts, ui = rendered
    by = {a.description.split(" of ")[0] if a.description.startswith("tile map") else a.description: a for a in arts}
    assert {"tile map", "supergen render metrics", "sketch preview and final contact sheet"} <= set(by)
    run = by["tile map"].flow_run_id
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{ui}/runs/flow-run/{run}", wait_until="networkidle")
    page.get_by_role("tab", name="Artifacts").click() if page.get_by_role("tab", name="Artifacts").count() \
        else page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("Task runs", exact=True).first.scroll_into_view_if_needed()  # task runs' cards load on view
    for text in ("tile map of", "refinement of", "supergen render metrics", "sketch preview and final contact sheet"):
        page.get_by_text(text).first.wait_for(timeout=15000)  # the progress artifact is "refinement of <store>"
    _shot(page, "operator_prefect_run.png")

    page.goto(f"{ui}/artifacts/artifact/{by['tile map'].id}", wait_until="networkidle")
    page.locator("table").first.wait_for(timeout=15000)
    body = page.inner_text("body")
    assert f"Refinement step {SPEC['refine_steps']} of {SPEC['refine_steps']}" in body and "cpu-" in body
    _shot(page, "operator_tile_map.png")

    page.goto(f"{ui}/artifacts/artifact/{by['supergen render metrics'].id}", wait_until="networkidle")
    page.get_by_text("bytes moved between workers").first.wait_for(timeout=15000)

    page.goto(f"{ui}/artifacts/artifact/{by['sketch preview and final contact sheet'].id}", wait_until="networkidle")
    img = page.locator("img[alt^='contact sheet']").first
    img.wait_for(timeout=15000)
    assert img.evaluate("i => i.complete && i.naturalWidth") > 0  # the preview loads in the page itself
    link = page.get_by_role("link", name="video.mp4").first
    got = page.request.get(link.get_attribute("href"))  # the link opens the render's video
    assert got.status == 200 and got.body() == store.read_file("video.mp4")
    _shot(page, "operator_preview.png")
    page.close()


def test_the_dask_dashboard_shows_the_tile_tasks_by_their_keys(rendered, browser, dask_cluster, tmp_path):
    """While a render refines: the dashboard's status page renders (Bokeh's plots, on canvas), and a worker's
    page lists the tile tasks it is processing under their readable keys (stage, step, tile, render)."""
    import re
    import threading
    import urllib.parse

    from distributed import Client

    from flows.render import run_stages
    from supergen import RenderSpec
    from supergen.executor import prepare

    spec = prepare(RenderSpec(**{**SPEC, "steps": 14, "refine_steps": 12, "cache": "none", "seed": 9}), here=False)
    with Client(dask_cluster, set_as_default=False) as client:
        port = client.scheduler_info()["services"]["dashboard"]
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        store = RenderStore.create(str(tmp_path / "s"), spec)
        done = threading.Event()
        job = threading.Thread(target=lambda: (run_stages(client, store), done.set()), daemon=True)
        job.start()
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        seen = []
        while not done.is_set() and not seen:
            for w in workers:
                page.goto(f"http://127.0.0.1:{port}/info/worker/{urllib.parse.quote(w, safe='')}.html", wait_until="load")
                seen += re.findall(r"(?:gather|denoise|advance)-s\d{3}-t\d{2}-\w+", page.inner_text("body"))
        if seen:
            page.goto(f"http://127.0.0.1:{port}/status", wait_until="load")
            page.locator("canvas").first.wait_for(timeout=15000)
            page.wait_for_timeout(1500)  # a second of task stream
            assert "Dask" in page.title()
            _shot(page, "operator_dask_status.png")
        job.join(120)
        page.close()
    assert seen, "no worker page listed a tile task while the render refined"
    assert done.is_set() and RenderStore.open(str(tmp_path / "s")).complete
