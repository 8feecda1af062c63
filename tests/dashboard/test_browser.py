"""The one real-browser test: the dashboard served as `python main.py dashboard` serves it, in Chromium.

Every page is visited and its content checked; the injection payloads in the run files must show as text
and never run (the script payload would set window.__xss). Needs Debian's chromium (/usr/bin/chromium) and
Playwright for Python; it skips, saying which, only when one of them is missing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from dashboard.loaders import FIRST_RUN_COMMAND

from .helpers import SECRET, SFT_PROMPT, XSS_IMG, XSS_SCRIPT, build_hostile_runs, streamlit_command

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 60
TIMEOUT_MS = 60_000  # a cold Streamlit page on 2 cores shared with other tests took over 20 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the dashboard exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"the dashboard did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture
def served(runs_root, tmp_path):
    """The dashboard on a free loopback port over the fixture runs; yields its base URL."""
    yield from _serve(runs_root, tmp_path)


@pytest.fixture
def served_hostile(tmp_path):
    """The dashboard over a runs root holding hostile files (tests/dashboard/helpers.build_hostile_runs)."""
    yield from _serve(build_hostile_runs(tmp_path / "runs", tmp_path / "outside"), tmp_path)


def _serve(runs_root, tmp_path):
    port = _free_port()
    command, env = streamlit_command(["--runs", str(runs_root), "--port", str(port)])
    log = tmp_path / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_serving(proc, port, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: streamlit and anything it started
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _no_injection_ran(page) -> None:
    assert page.evaluate("() => window.__xss") is None
    assert page.locator('img[src="x"]').count() == 0


def shown(locator):
    """The first visible match (Streamlit keeps hidden copies of some text, e.g. for accessibility)."""
    return locator.filter(visible=True).first


def _visit(page, url: str, title: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name=title, exact=True).wait_for()


@pytest.fixture
def sync_api():
    """Playwright's sync API, or a skip naming what is missing (checked before the server starts)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Debian chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    return pytest.importorskip(
        "playwright.sync_api",
        reason="playwright is not installed (pip install -c constraints.txt playwright)",
    )


def test_every_page_in_chromium_shows_payloads_as_text(sync_api, served, runs_root):
    expect = sync_api.expect
    expect.set_options(timeout=TIMEOUT_MS)  # 2 busy cores: Streamlit reruns can take seconds
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)

            _visit(page, served + "/", "Runs")
            report = page.locator("code").filter(has_text="win rate 0.61")
            expect(report).to_contain_text(XSS_IMG)
            expect(shown(page.get_by_text("ppo/live", exact=True))).to_be_visible()  # a run-picker chip
            _no_injection_ran(page)

            _visit(page, served + "/curves", "Curves")
            page.get_by_role("heading", name="sft/", exact=True).wait_for()
            page.locator(".vega-embed").first.wait_for()
            expect(shown(page.get_by_text("ppo/reward_mean", exact=True))).to_be_visible()

            _visit(page, served + "/rankings", "Rankings")
            page.get_by_role("heading", name="Prompts, most disagreement first").wait_for()
            expect(shown(page.locator("code").filter(has_text=XSS_SCRIPT))).to_be_visible()
            _no_injection_ran(page)

            _visit(page, served + "/samples", "Samples")
            expect(shown(page.get_by_text(XSS_SCRIPT, exact=True))).to_be_visible()
            expect(page.get_by_role("combobox", name="Prompt")).to_have_value(SFT_PROMPT)
            _no_injection_ran(page)
            search = page.get_by_label("Search prompts and completions")
            search.fill("onerror")
            search.press("Enter")
            page.get_by_text("1 of 5 samples", exact=True).wait_for()
            expect(page.get_by_role("combobox", name="Prompt")).to_have_value(XSS_IMG)  # as text
            expect(shown(page.get_by_text("x y", exact=True))).to_be_visible()
            _no_injection_ran(page)

            _visit(page, served + "/compare", "Compare")
            page.get_by_text("Choose at least two stage directories and type a prompt.").wait_for()
            expect(shown(page.get_by_text("sft/alpha  [sft, step 20]"))).to_be_visible()
            _no_injection_ran(page)

            # The sidebar's runs root: an edit sticks, shows the empty state, and survives a page switch.
            root = page.get_by_role("textbox", name="Runs root")
            root.fill(str(runs_root / "no-runs"))  # a folder inside the runs root given at start-up
            root.press("Enter")
            expect(page.locator("code").filter(has_text="configs/demo/sft.yaml")).to_be_visible()
            page.get_by_role("link", name="Runs", exact=True).click()
            expect(page.locator("code").filter(has_text=FIRST_RUN_COMMAND)).to_be_visible()
            expect(page.get_by_role("textbox", name="Runs root")).to_have_value(str(runs_root / "no-runs"))
        finally:
            browser.close()


def test_every_page_renders_over_a_hostile_runs_root_in_chromium(sync_api, served_hostile):
    """Deeply nested JSON, a FIFO status.json, a folder named metrics.jsonl, links out of the root: every page
    renders, names the bad files, and shows nothing from outside the root."""
    expect = sync_api.expect
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)

            _visit(page, served_hostile + "/", "Runs")
            expect(shown(page.get_by_text("sft/alpha", exact=True))).to_be_visible()  # a run-picker chip
            expect(shown(page.get_by_text("status files could not be read and were skipped"))).to_be_visible()
            expect(shown(page.get_by_text("metric rows could not be read and were skipped"))).to_be_visible()
            expect(page.locator("code").filter(has_text="win rate 0.61")).to_be_visible()
            assert SECRET not in page.content()

            _visit(page, served_hostile + "/curves", "Curves")
            page.get_by_role("heading", name="sft/", exact=True).wait_for()
            page.locator(".vega-embed").first.wait_for()

            _visit(page, served_hostile + "/rankings", "Rankings")  # reward/folder first: no rankings
            page.get_by_role("heading", name="RM accuracy over time").wait_for()
            page.get_by_text("This run has written no rankings yet", exact=False).first.wait_for()

            _visit(page, served_hostile + "/samples", "Samples")
            expect(page.get_by_role("combobox", name="Prompt")).to_have_value(SFT_PROMPT)

            _visit(page, served_hostile + "/compare", "Compare")
            expect(
                shown(page.get_by_text("stage directories could not be read and were skipped"))
            ).to_be_visible()
            expect(shown(page.get_by_text("sft/alpha  [sft, step 20]"))).to_be_visible()
            assert SECRET not in page.content()
        finally:
            browser.close()


QUEUE = [
    {"prompt": "a b c =", "responses": ["c b a", "a b c", "c b a", "b a c"]},
    {"prompt": "c d =", "responses": ["d c", "c d"]},
    {"prompt": "e f g =", "responses": ["g f e", "e f g"]},
]


@pytest.fixture
def served_queue(tmp_path):
    """The dashboard over a runs root holding one ranking queue (queue/mine.jsonl, three prompts)."""
    from .helpers import write_jsonl

    root = tmp_path / "runs"
    write_jsonl(root / "queue" / "mine.jsonl", QUEUE)
    yield from _serve(root, tmp_path)


def test_ranking_queue_in_chromium_writes_rows_the_reward_stage_trains_on(
    sync_api, served_queue, tmp_path, tiny_dir
):
    """Three prompts ranked in the browser (keyboard with a tie, clicks, keyboard), a reload in between; the rows
    are comparisons, and a reward model trains on them."""
    import re

    import lightning as L
    import torch

    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig
    from lit_rlhf.checkpoint.stage_dir import save_stage_dir
    from lit_rlhf.data.comparisons import ComparisonDataModule
    from lit_rlhf.data.rows import Comparison, read_rows
    from lit_rlhf.stages.common import OptimConfig
    from lit_rlhf.stages.reward import RewardModule

    expect = sync_api.expect
    expect.set_options(timeout=TIMEOUT_MS)
    order = re.compile(r"^Ranking, best first")

    def order_box(page, index: int):
        # The box of this prompt's form, found by its widget key: while Streamlit reruns, the previous prompt's
        # form can still be in the page, and a label alone then matches two boxes.
        return page.locator(f".st-key-queue_mine_{index}_order").get_by_label(order)

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(TIMEOUT_MS)
            _visit(page, served_queue + "/ranking_queue", "Ranking queue")
            expect(page.locator("code").filter(has_text="a b c =").first).to_be_visible()
            box = order_box(page, 0)
            box.fill("c a=b")  # keyboard: C best, A and B tied
            box.press("Enter")
            expect(page.locator("code").filter(has_text="c d =").first).to_be_visible()
            page.reload()  # progress lives in files, not in the browser
            page.get_by_role("heading", name="Ranking queue", exact=True).wait_for()
            expect(page.locator("code").filter(has_text="c d =").first).to_be_visible()
            page.get_by_role("radiogroup", name="Place of A").get_by_role("radio", name="2").click()
            page.get_by_role("radiogroup", name="Place of B").get_by_role("radio", name="1").click()
            page.get_by_role("button", name="Submit ranking").click()
            expect(page.locator("code").filter(has_text="e f g =").first).to_be_visible()
            box = order_box(page, 2)
            box.fill("A B")
            box.press("Enter")
            expect(shown(page.get_by_text("Every prompt is ranked or skipped."))).to_be_visible()
            expect(shown(page.get_by_text("3 of 3 prompts ranked, 0 skipped.", exact=False))).to_be_visible()
        finally:
            browser.close()

    path = tmp_path / "runs" / "comparisons" / "mine.jsonl"
    rows, report = read_rows(path, "comparison")
    assert rows == [
        Comparison("a b c =", ("c b a", "a b c", "b a c"), (1, 1, 0)),
        Comparison("c d =", ("d c", "c d"), (1, 0)),
        Comparison("e f g =", ("g f e", "e f g"), (0, 1)),
    ]
    assert report.skipped == []

    torch.manual_seed(0)
    save_stage_dir(
        tmp_path / "sft", Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2"))), stage="sft"
    )
    module = RewardModule(
        init_from=str(tmp_path / "sft"), optim=OptimConfig(lr=1e-2, warmup_steps=0), max_length=32
    )
    module.configure_model()
    head = {n: p.detach().clone() for n, p in module.net.heads["reward"].named_parameters()}
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, ComparisonDataModule(str(path), str(path), batch_size=2, max_length=32))
    assert trainer.global_step == 4
    assert 0.0 <= float(trainer.callback_metrics["reward/val_accuracy"]) <= 1.0
    assert torch.isfinite(trainer.callback_metrics["reward/loss"])
    moved = [
        n for n, p in module.net.heads["reward"].named_parameters() if not torch.equal(p.detach(), head[n])
    ]
    assert moved, "the reward head did not train on the queue's rows"
