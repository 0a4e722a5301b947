"""The one atomic writer every result, report and site file goes through (fedens.files)."""

import random
import signal
import subprocess
import sys
import time

from fedens.files import write_atomic

CHILD = """import sys
from pathlib import Path
from fedens.files import write_atomic
versions = [Path(p).read_bytes() for p in sys.argv[2:]]
print("ready", flush=True)
i = 0
while True:
    i += 1
    write_atomic(sys.argv[1], versions[i % 2])
"""


def test_a_writer_killed_at_any_moment_leaves_the_old_file_or_the_new_one(tmp_path):
    versions = [b"old " * 3_000_000, b"new " * 3_000_000]  # a few MB: a write takes a while
    sources = [tmp_path / "old.bin", tmp_path / "new.bin"]
    for source, content in zip(sources, versions, strict=True):
        source.write_bytes(content)
    out = tmp_path / "run"
    out.mkdir()
    target = out / "results.json"
    write_atomic(target, versions[0])
    rng = random.Random(0)
    for _ in range(8):  # kill -9 at a random moment of a writing loop
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(target), *map(str, sources)],
                                stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        content = target.read_bytes()
        assert content in versions, f"a torn file of {len(content)} bytes"
    # a kill mid-write leaves at most a temporary file beside the target, never in its place
    assert all(p.name.startswith(".results.json.") and p.suffix == ".tmp"
               for p in out.iterdir() if p != target)
