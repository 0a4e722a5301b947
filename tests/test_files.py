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


def test_state_files_round_trip_and_run_no_code(tmp_path):
    import pickle

    import numpy as np
    import pytest

    from fedens.files import read_state, state_bytes

    state = {"round": 2, "nan": float("nan"), "moments": {"w": np.arange(6.0).reshape(2, 3)},
             "rows": [{"site": 1, "acc": np.float32(0.5)}], "pair": ("a", 1), 3: [None, True]}
    back = read_state(state_bytes(state))
    assert back["round"] == 2 and np.isnan(back["nan"]) and back["pair"] == ("a", 1)
    assert back[3] == [None, True]
    np.testing.assert_array_equal(back["moments"]["w"], state["moments"]["w"])
    assert back["rows"] == [{"site": 1, "acc": 0.5}]
    with pytest.raises(TypeError, match=r"state\['where'\]: PosixPath cannot be stored without code"):
        state_bytes({"where": tmp_path})
    with pytest.raises(TypeError, match="object array"):
        state_bytes({"x": np.array([tmp_path], dtype=object)})
    for not_state in (pickle.dumps({"round": 2}), b"", state_bytes(state)[:100]):
        with pytest.raises(ValueError, match="not a fedens state file"):
            read_state(not_state)


def test_equal_contents_give_equal_bytes():
    """A file's sha256 names it in the sites' caches and in release keys: writing the same
    arrays (or experts) twice, seconds apart, must give the same bytes."""
    import numpy as np

    from fedens.files import npz_bytes, reproducible_zip

    first = npz_bytes(X=np.arange(6.0), y=np.arange(3))
    time.sleep(2.1)  # zip stamps entries to 2 s
    assert npz_bytes(X=np.arange(6.0), y=np.arange(3)) == first
    assert reproducible_zip(first) == first
