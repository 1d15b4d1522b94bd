"""`make screenshots`: pictures of what a user sees, from a real local stack in headless Chromium.

Starts the stack (``ephemeral.devstack``, SQLite, a throwaway home), then saves into docs/:
the graph of each reference DAG with its task groups expanded (setup arrows and the dashed
setup-to-teardown lines), and ray_job_adhoc's trigger form with each section open. The stack is
stopped afterwards; nothing runs, no cluster is made.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GRAPHS = ("train_distributed", "ray_job_adhoc")


def graph(page: Any, url: str, dag_id: str, out: Path) -> None:
    page.goto(f"{url}/dags/{dag_id}")
    page.get_by_role("button", name="Show Graph (Press g)").click()
    page.locator(".react-flow__node").first.wait_for()
    expand = page.get_by_role("button", name="Expand all task groups")
    if expand.count():  # only DAGs with task groups have it
        expand.click()
    collapse = page.get_by_role("button", name="Collapse Details Panel")
    if collapse.count():
        collapse.click()
    page.add_style_tag(content=".react-flow__minimap, .react-flow__attribution "
                               "{display: none !important}")
    page.wait_for_timeout(1500)
    page.locator(".react-flow__controls-fitview").click()
    page.add_style_tag(content=".react-flow__panel {display: none !important}")  # zoom, download
    page.wait_for_timeout(1000)
    page.locator(".react-flow").screenshot(path=out)


def trigger_form(page: Any, url: str, out_dir: Path) -> list[Path]:
    from ephemeral.devstack import ui

    dialog = ui.open_trigger_form(page, url, "ray_job_adhoc")
    saved = []
    for section in ("Cluster", "Job"):
        ui.open_section(dialog, section)
        page.wait_for_timeout(500)
        path = out_dir / f"trigger-form-{section.lower()}.png"
        dialog.screenshot(path=path)
        saved.append(path)
    page.keyboard.press("Escape")
    return saved


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from ephemeral.devstack import Stack, ui

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "EPHEMERAL_"))}
    with tempfile.TemporaryDirectory(prefix="ephemeral-screenshots-") as tmp:
        stack = Stack(home=Path(tmp) / "airflow", ephemeral_home=Path(tmp) / "ephemeral",
                      port=0, base_env=env)
        print(f"starting a stack in {tmp} ...", flush=True)
        saved: list[Path] = []
        try:
            stack.start()
            for dag_id in GRAPHS:
                stack.wait_parsed(dag_id)
            with ui.chromium() as browser:
                page = browser.new_page(viewport={"width": 1500, "height": 620},
                                        device_scale_factor=2)
                page.set_default_timeout(90_000)  # a busy machine renders slowly
                ui.sign_in(page, stack.url, f"/dags/{GRAPHS[0]}", stack.username,
                           stack.password)
                for dag_id in GRAPHS:
                    path = DOCS / f"{dag_id}-graph.png"
                    graph(page, stack.url, dag_id, path)
                    saved.append(path)
                page.set_viewport_size({"width": 1100, "height": 1300})
                saved += trigger_form(page, stack.url, DOCS)
        finally:
            stack.stop()
    for path in saved:
        print(f"saved {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
