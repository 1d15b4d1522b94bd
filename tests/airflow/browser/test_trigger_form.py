"""ray_job_adhoc as a person runs it: the trigger form in headless Chromium, on the PostgreSQL
stack. Screenshots of each step go to pytest's temporary folder (``screenshots*``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from ephemeral.devstack import Stack, ui

pytestmark = [pytest.mark.slow, pytest.mark.local]
DAG = "ray_job_adhoc"


@pytest.fixture
def page(stack: Stack) -> Iterator[Any]:
    stack.wait_parsed(DAG)
    with ui.chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(90_000)  # a busy machine renders slowly
        ui.sign_in(page, stack.url, f"/dags/{DAG}", stack.username, stack.password)
        yield page


def run_id_of(page: Any) -> str:
    page.wait_for_url("**/runs/**", timeout=60_000)
    return unquote(page.url.split("/runs/", 1)[1].split("/", 1)[0])


def follow_in_ui(page: Any, stack: Stack, run_id: str, want: str, timeout: float = 480) -> None:
    """Watch the run's page, reloading it every 10 s as a person would, until the run ends
    (asked every second, so the test does not wait out a reload after the end); then its page
    must show the state ``want``."""
    url = f"{stack.url}/dags/{DAG}/runs/{run_id}"
    deadline = time.monotonic() + timeout
    state = "queued"
    while time.monotonic() < deadline and state not in ("success", "failed"):
        page.goto(url)
        page.wait_for_load_state("networkidle")
        reload_at = min(time.monotonic() + 10, deadline)
        while True:
            state = str(stack.run(DAG, run_id)["state"])
            if state in ("success", "failed") or time.monotonic() >= reload_at:
                break
            page.wait_for_timeout(1_000)
    assert state == want, f"run ended {state}: {stack.task_instances(DAG, run_id)}"
    page.reload()
    # The run's header: its id, then its state badge.
    badge = page.locator("h2", has_text=run_id).locator("xpath=..").get_by_test_id("state-badge")
    badge.first.wait_for(timeout=30_000)
    assert badge.first.inner_text().strip() == want.capitalize()


def no_clusters(stack: Stack) -> bool:
    return stack.delete_clusters() == []


def test_the_trigger_form_runs_a_ray_job_and_links_its_dashboard(
        stack: Stack, page: Any, artifacts: Path) -> None:
    dialog = ui.open_trigger_form(page, stack.url, DAG)
    ui.open_section(dialog, "Cluster")
    # Reads well: a null profile reads "none", the optional pip list is not required.
    profile = dialog.locator("div:has(> input[name=element_profile])")
    assert profile.inner_text().startswith("none"), profile.inner_text()
    assert dialog.locator("[name=element_entrypoint]").get_attribute("required") is not None
    dialog.screenshot(path=artifacts / "adhoc-1-form.png")

    ui.pick(dialog, "cluster_spec", "ray/adhoc-cpu")
    ui.pick(dialog, "profile", "ci-cpu")
    ui.set_number(dialog, "workers", 1)
    ui.open_section(dialog, "Job")
    assert dialog.locator("[name=element_pip]").get_attribute("required") is None
    ui.set_text(dialog, "entrypoint", "python hello_ray.py")
    dialog.screenshot(path=artifacts / "adhoc-2-filled.png")
    ui.submit(dialog)
    run_id = run_id_of(page)
    conf = stack.run(DAG, run_id)["conf"]
    assert (conf["profile"], conf["workers"], conf["entrypoint"]) == (
        "ci-cpu", 1, "python hello_ray.py"), conf

    follow_in_ui(page, stack, run_id, "success")
    page.screenshot(path=artifacts / "adhoc-3-run-success.png")

    # The job task's extra link: the dashboard of the cluster this run made (deleted by now,
    # so what can be checked is where it leads).
    dashboard = stack.links(DAG, run_id, "create_cluster")["Ray dashboard"]
    assert dashboard, "create_cluster has no dashboard link"
    assert dashboard.startswith("http://127."), dashboard
    assert stack.links(DAG, run_id, "run_job")["Ray dashboard"] == dashboard
    page.goto(f"{stack.url}/dags/{DAG}/runs/{run_id}/tasks/run_job")
    link = page.locator(f"a[href='{dashboard}']").first
    link.wait_for(state="attached", timeout=30_000)
    page.screenshot(path=artifacts / "adhoc-4-job-task.png")
    with page.context.expect_page() as opened:
        link.dispatch_event("click")
    assert opened.value.url.rstrip("/") in (dashboard, "chrome-error://chromewebdata"), \
        opened.value.url
    assert no_clusters(stack)


def test_invalid_values_are_refused_and_create_no_cluster(
        stack: Stack, page: Any, artifacts: Path) -> None:
    # Workers 0: below the form's minimum; the form does not send it.
    dialog = ui.open_trigger_form(page, stack.url, DAG)
    ui.open_section(dialog, "Cluster")
    ui.set_number(dialog, "workers", 0)
    dialog.screenshot(path=artifacts / "invalid-1-workers-0.png")
    runs_before = stack.request("GET", f"/api/v2/dags/{DAG}/dagRuns")[1]["total_entries"]
    shown = ui.number_input(dialog, "workers").input_value()
    submit = dialog.get_by_test_id("trigger-dag-submit")
    if shown == "0" and submit.is_enabled():
        submit.click()
        page.wait_for_timeout(3000)
    dialog.screenshot(path=artifacts / "invalid-2-workers-0-submitted.png")
    runs = stack.request("GET", f"/api/v2/dags/{DAG}/dagRuns")[1]
    new = [r for r in runs["dag_runs"] if r["conf"].get("workers") == 0]
    assert not new, f"a run was created with workers 0: {new}"
    assert runs["total_entries"] - runs_before <= (0 if shown == "0" else 1)
    page.keyboard.press("Escape")

    # An entrypoint outside jobs/: the schema allows it, the validation task refuses it.
    dialog = ui.open_trigger_form(page, stack.url, DAG)
    ui.open_section(dialog, "Cluster")
    ui.pick(dialog, "profile", "ci-cpu")
    ui.set_number(dialog, "workers", 1)
    ui.open_section(dialog, "Job")
    ui.set_text(dialog, "entrypoint", "python ../scripts/demo.py")
    ui.submit(dialog)
    run_id = run_id_of(page)
    follow_in_ui(page, stack, run_id, "failed", timeout=240)
    states = {k: v["state"] for k, v in stack.task_instances(DAG, run_id).items()}
    assert states["validate_request"] == "failed", states
    assert states["create_cluster"] == "upstream_failed", states
    page.goto(f"{stack.url}/dags/{DAG}/runs/{run_id}/tasks/validate_request")
    error = page.get_by_text("is not a script in jobs/").first
    error.wait_for(timeout=60_000)
    page.screenshot(path=artifacts / "invalid-3-entrypoint-refused.png")
    assert no_clusters(stack)
