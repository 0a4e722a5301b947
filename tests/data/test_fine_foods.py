"""modeldata's fine-food reviews, read offline from Debian's r-cran-modeldata files: the published
split and label balance, and a file that is not the pinned one is refused."""

from __future__ import annotations

import shutil

import pytest

from fedens.data.fine_foods import LABELS, fine_food_reviews, modeldata_dir


def test_the_reviews_are_modeldatas_split_with_its_label_balance():
    train, test = fine_food_reviews()
    assert (len(train), len(test)) == (4000, 1000)
    assert list(train.columns) == ["product", "review", "score"]
    assert set(train["score"]) == set(test["score"]) == set(LABELS)
    assert (test["score"] == "great").mean() == pytest.approx(0.658)  # modeldata's documented skew
    assert train["product"].is_unique and not set(train["product"]) & set(test["product"])
    assert train["review"].str.len().min() >= 50


def test_a_file_that_is_not_the_pinned_one_is_refused(tmp_path, monkeypatch):
    for name in ("Rdata.rdb", "Rdata.rdx"):
        shutil.copy(modeldata_dir() / name, tmp_path / name)
    with (tmp_path / "Rdata.rdx").open("ab") as f:
        f.write(b"\0")
    monkeypatch.setenv("FEDENS_MODELDATA", str(tmp_path))
    with pytest.raises(ValueError, match=r"Rdata.rdx has sha256 [0-9a-f]{16}\.\.\., expected c23e1be6"):
        modeldata_dir()
    monkeypatch.setenv("FEDENS_MODELDATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("FEDENS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("fedens.data.fine_foods.SYSTEM_DIR", tmp_path / "no-system-install")
    with pytest.raises(FileNotFoundError, match=r"run ./scripts/setup, which extracts them from Debian's "
                                                r"r-cran-modeldata_1.1.0-1_all.deb"):
        modeldata_dir()
