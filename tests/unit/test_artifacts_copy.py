"""Artifact copies stream: a file larger than the memory a copy may use is copied in chunks,
and trees copy across file:// URIs and plain local paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ephemeral.jobs import artifacts

FILE_MIB = 96
# A streamed copy holds a chunk or a few (pyarrow copies files on threads), not the file.
CAP_MIB = 32

# In a fresh process: pyarrow's memory pool peak and the process's peak RSS growth over one copy.
# The peak (VmHWM) is reset to the current RSS right before the copy (Linux: clear_refs 5), so
# what the imports used before cannot hide the copy's own peak.
PROBE = """
import json, sys
import pyarrow as pa
from pyarrow import fs
from ephemeral.jobs import artifacts

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))

fs.LocalFileSystem()  # load pyarrow's filesystem code before the baseline
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")
before = kib("VmRSS:")
if sys.argv[3] == "whole":  # the old way: read the file, write it
    artifacts.write_bytes(sys.argv[2], artifacts.read_bytes(sys.argv[1]))
else:
    artifacts.copy(sys.argv[1], sys.argv[2])
print(json.dumps({"pool_peak": pa.default_memory_pool().max_memory(),
                  "rss_growth": (kib("VmHWM:") - before) * 1024}))
"""


def _peak(src: str, dst: str, how: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, src, dst, how], capture_output=True,
                         text=True, check=True, timeout=300)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "model.bin"
    path.parent.mkdir()
    block = os.urandom(1024 * 1024)
    with path.open("wb") as fh:
        for _ in range(FILE_MIB):
            fh.write(block)
    return path


def test_a_file_larger_than_the_cap_is_copied_in_chunks(big_file: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst" / "nested" / "model.bin"
    peak = _peak(f"file://{big_file}", str(dst), "stream")
    assert dst.stat().st_size == big_file.stat().st_size
    assert dst.read_bytes()[-4096:] == big_file.read_bytes()[-4096:]
    cap = CAP_MIB * 1024 * 1024
    assert peak["pool_peak"] < cap, peak
    assert peak["rss_growth"] < cap, peak
    # The probe can tell: reading the file whole goes past the cap.
    whole = _peak(str(big_file), str(tmp_path / "whole.bin"), "whole")
    assert max(whole.values()) > cap, whole


@pytest.mark.parametrize(("src_uri", "dst_uri"), [(True, False), (False, True), (True, True)])
def test_a_tree_copies_across_file_uris_and_local_paths(tmp_path: Path, src_uri: bool,
                                                        dst_uri: bool) -> None:
    src = tmp_path / "run" / "model"
    files = {"config.json": b'{"a": 1}', "weights/part-0.bin": os.urandom(300_000),
             "weights/part-1.bin": os.urandom(5), "tokenizer/vocab.txt": b"a\nb\n"}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    dst = tmp_path / "registry" / "best" / "model"
    artifacts.copy(f"file://{src}" if src_uri else str(src),
                   f"file://{dst}" if dst_uri else str(dst))
    copied = {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*")
              if p.is_file()}
    assert copied == files


def test_copying_nothing_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing at"):
        artifacts.copy(str(tmp_path / "absent"), str(tmp_path / "dst"))
