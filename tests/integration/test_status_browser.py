"""What an operator sees: the status page in a real browser (Debian's headless Chromium, driven
by Playwright) during a scripted call on the rig (stand-in stages, real call loop, mock pins).

Every state the call holds long enough to be seen reaches the page within 1 s of the change, the
page never reloads, and after the call it shows the call with its turn, the transcript (the
default privacy setting shows it on the page), healthy parts and a latency chart.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from payphone.call.events import CallState
from payphone.sim.rig import Rig
from tests.support.ollama_server import free_port
from tests.unit.test_call_loop import running, speak, switch_off
from tests.unit.test_status import make_page, rig_for, status_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SEEN_LONG_ENOUGH_S = 0.25  # a state this long must show; shorter ones may be merged by the page
LIMIT_S = 1.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium (apt-get install chromium)"),
]

# records every state the page shows, with the browser's wall clock, from the first paint on;
# each mutation record counts (one callback may carry several when renders come in one task)
RECORD_STATES = """
window.__seen = [];
document.addEventListener("DOMContentLoaded", () => {
  const node = document.getElementById("state");
  new MutationObserver((records) => {
    const t = Date.now();
    records.forEach((record, i) => {
      const next = records[i + 1];
      window.__seen.push({state: next ? next.oldValue : node.dataset.state, t});
    });
  }).observe(node, {attributes: true, attributeOldValue: true, attributeFilter: ["data-state"]});
});
"""


async def scripted_call(rig: Rig) -> None:
    """Lift, hear the dial tone and the greeting, say something, hear the answer, hang up."""
    rig.lift()
    await rig.wait_state(CallState.LISTENING, timeout=10)
    await speak(rig, 0.6)
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    await rig.wait_state(CallState.LISTENING, timeout=10)
    rig.replace()


async def test_the_page_shows_each_state_within_1_s_and_the_call_after(tmp_path: Path) -> None:
    port = free_port()
    page = make_page(status_settings(listen=[f"127.0.0.1:{port}"]))
    changes: list[tuple[str, float]] = []
    problems: list[str] = []  # script errors and console errors (a CSP violation, a 404)

    def on_state(state: CallState) -> None:
        page.on_state(state)
        changes.append(("idle" if state is CallState.ENDED else state.value, time.time()))

    rig = rig_for(page, ["good evening"], sink_speed=1.0, on_state=on_state)
    async with page.serving(), async_playwright() as pw:
        browser = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            tab = browser.pages[0] if browser.pages else await browser.new_page()
            tab.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
            tab.on(
                "console",
                lambda msg: problems.append(msg.text) if msg.type == "error" else None,
            )
            await tab.add_init_script(RECORD_STATES)
            await tab.goto(f"http://127.0.0.1:{port}/")
            await tab.wait_for_selector("#state[data-state='idle']", timeout=5000)
            await tab.wait_for_selector("#link.up", timeout=5000)
            task = await running(rig)
            await scripted_call(rig)
            await tab.wait_for_selector("#state[data-state='idle']", timeout=3000)
            await tab.wait_for_selector("#calls details table tr:nth-child(2)", timeout=3000)
            seen: list[dict[str, float | str]] = await tab.evaluate("window.__seen")
            state_text = await tab.inner_text("#state")
            health = await tab.inner_text("#health")
            calls = await tab.inner_text("#calls")
            llm = await tab.inner_text("#card-llm")
            totals = await tab.inner_text("#totals")
            charts = await tab.locator("#chart-v2v canvas").count()
            navigations = await tab.evaluate("performance.getEntriesByType('navigation').length")
            await switch_off(rig, task)
        finally:
            await browser.close()

    assert [state for state, _ in changes][:3] == ["dial_tone", "greeting", "listening"]
    for index, (state, at) in enumerate(changes):
        until = changes[index + 1][1] if index + 1 < len(changes) else float("inf")
        if until - at < SEEN_LONG_ENOUGH_S:
            continue
        # the page's clock is whole milliseconds (Date.now() floors): a state shown in the same
        # millisecond as the change reads up to 1 ms before it
        since_ms = math.floor(at * 1000)
        shown = [float(s["t"]) / 1000 for s in seen if s["state"] == state and s["t"] >= since_ms]
        assert shown, f"the page never showed {state!r} (held {until - at:.2f} s): {changes} {seen}"
        assert shown[0] - at < LIMIT_S, f"{state!r} showed {shown[0] - at:.2f} s late"
    assert {"listening", "thinking", "speaking", "idle"} <= {str(s["state"]) for s in seen}
    assert state_text == "Idle: handset on the hook"
    assert health.startswith("healthy: ")
    assert "good evening" in calls and "Hello there. Nice evening." in calls
    assert "The Operator" in calls and "1 turn(s)" in calls
    assert "up" in llm and "stand-in" in llm
    assert "1\ncalls" in totals
    assert charts >= 1
    assert navigations == 1  # live updates, no reload
    assert problems == []
