"""A tiny Ray job for tests/airflow/test_lineage.py: reads --data-uri, writes its rows under the
artifact root and reports what it wrote (and, as jobs/evaluate.py does, the URI it read)."""

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-uri", required=True)
    p.add_argument("--run", required=True)
    args = p.parse_args()
    rows = Path(args.data_uri.removeprefix("file://")).read_text().splitlines()
    out = f"{os.environ['EPHEMERAL_ARTIFACT_ROOT'].rstrip('/')}/lineage/{args.run}"
    folder = Path(out.removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.txt").write_text("\n".join(rows))
    (folder / "metrics.json").write_text(json.dumps({"rows": len(rows)}))
    print(json.dumps({"artifact_uri": f"{out}/rows.txt", "metrics_uri": f"{out}/metrics.json",
                      "data_uri": args.data_uri, "rows": len(rows)}))


if __name__ == "__main__":
    main()
