#!/usr/bin/env python3
"""Calibrate `termlm qa --min-similarity`: the cosine cut-off for "not in the documents".

Runs termlm's own QA index and retrieval (the same chunking, embedding prefixes and
ranking as `termlm qa`) with a real embedding model on a small labelled set:
questions with the passage that answers them, and questions the documents do not
answer (off-topic ones, and near misses about the same subjects). It prints:

- each question's scores: the cosine of the passage that answers it (or, for a
  question with no answer, of the best passage), and where bm25, vector and hybrid
  retrieval rank the answer;
- the distributions, and the cut-off that best separates answers from off-topic
  questions (fewest errors; among equals, the middle of the widest gap). Near misses
  are not used to choose it: a question about a subject the documents cover is
  often as similar to them as a real answer, so the cut-off cannot catch it (the
  model, told to say so, has to); how many it does catch is printed;
- how often each retrieval puts the answer among the passages the model gets, at
  that cut-off (bm25 at its own default --min-score).

Usage:  .venv/bin/python scripts/calibrate_qa_cutoff.py [--embed-model minilm] [--top-k 4]
        [--json]   (--fake: the FakeEmbedder, to check the script itself, not a model)
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCS = {
    "httpie/config.md": "Set the HTTPIE_CONFIG_DIR environment variable to change where the "
                        "configuration directory lives. By default it is ~/.config/httpie.",
    "httpie/sessions.md": "Sessions keep cookies and authentication between requests to the "
                          "same host. Create one with --session NAME; later requests that use "
                          "the same name reuse it.",
    "httpie/download.md": "Use --download to save the response body to a file in the current "
                          "folder, like wget. The file name comes from the Content-Disposition "
                          "header or the URL.",
    "httpie/output.md": "Output is coloured and formatted when it goes to a terminal. Use "
                        "--pretty=none to print it exactly as received, for example in shell "
                        "scripts.",
    "httpie/proxies.md": "Requests go through the proxies named by the HTTP_PROXY and "
                         "HTTPS_PROXY environment variables, or by --proxy=http:URL.",
    "httpie/forms.md": "With --form, data fields are sent as a form (urlencoded). Files are "
                       "uploaded with field@path/to/file, which makes it a multipart request.",
    "httpie/timeout.md": "The --timeout option sets how many seconds to wait for the server "
                         "to respond before giving up; the default is 0, no limit.",
    "httpie/ssl.md": "Pass --verify=no to skip checking the server's TLS certificate, or "
                     "--verify=/path/to/ca-bundle.pem to trust a custom certificate authority.",
    "plant/reactor.md": "The Zorblax reactor was commissioned in 1987 in Tromsø. It is cooled "
                        "by sea water drawn from the fjord.",
    "plant/staff.md": "The plant employs forty engineers, who work in three shifts; the night "
                      "shift is the smallest.",
    "home/hedges.md": "Trim hedges in late spring, after birds have finished nesting. Use sharp "
                      "shears so the cuts heal quickly.",
    "home/bread.md": "Sourdough bread needs a starter of flour and water. Bake it at 230 "
                     "degrees for about forty minutes.",
    "home/bike.md": "Keep the bicycle chain clean and oiled every few hundred kilometres; a "
                    "dry chain wears the gears out.",
}

ANSWERABLE = [  # (question, the passage that answers it)
    ("How can I make the tool keep its settings folder somewhere else?", "httpie/config.md"),
    ("Which environment variable moves the config directory?", "httpie/config.md"),
    ("Where are the preferences stored by default?", "httpie/config.md"),
    ("How do I stay logged in across several calls to the same site?", "httpie/sessions.md"),
    ("How can I reuse cookies between requests?", "httpie/sessions.md"),
    ("How do I save what the server sends back into a file?", "httpie/download.md"),
    ("Can it fetch a file like wget does?", "httpie/download.md"),
    ("How do I turn off the colours when piping into a script?", "httpie/output.md"),
    ("Why does the output look different in my terminal?", "httpie/output.md"),
    ("How do I send my traffic through a corporate proxy?", "httpie/proxies.md"),
    ("How do I upload a file?", "httpie/forms.md"),
    ("How do I submit form fields instead of JSON?", "httpie/forms.md"),
    ("How long does it wait for a slow server?", "httpie/timeout.md"),
    ("How can I ignore a self-signed certificate error?", "httpie/ssl.md"),
    ("When was the Zorblax reactor commissioned?", "plant/reactor.md"),
    ("What keeps the reactor from overheating?", "plant/reactor.md"),
    ("How many engineers work at the plant?", "plant/staff.md"),
    ("When is the best time of year to cut a hedge?", "home/hedges.md"),
    ("What temperature should sourdough be baked at?", "home/bread.md"),
    ("How often should I lubricate my bike chain?", "home/bike.md"),
    ("What happens if I never oil the chain?", "home/bike.md"),
    ("What do I need before I can make sourdough?", "home/bread.md"),
    ("How long does the loaf stay in the oven?", "home/bread.md"),
    ("Why should I wait until late spring to prune?", "home/hedges.md"),
    ("Which tool gives the cleanest cut on a hedge?", "home/hedges.md"),
    ("How are the staff's working hours organised?", "plant/staff.md"),
    ("Where does the cooling water come from?", "plant/reactor.md"),
    ("In which town is the reactor?", "plant/reactor.md"),
    ("How do I trust my company's own certificate authority?", "httpie/ssl.md"),
    ("Is there a limit on how long a request may take by default?", "httpie/timeout.md"),
    ("How do I send a multipart request?", "httpie/forms.md"),
    ("Which variables does it read the proxy settings from?", "httpie/proxies.md"),
    ("How do I get the raw response without formatting?", "httpie/output.md"),
    ("How is the name of a downloaded file chosen?", "httpie/download.md"),
    ("How do I name a session so later requests reuse it?", "httpie/sessions.md"),
]

OFF_TOPIC = [
    "What is the airspeed of an unladen swallow?",
    "Who won the football world cup in 1998?",
    "What is the boiling point of water on Mars?",
    "How do I knit a woollen scarf?",
    "What is the capital of Australia?",
    "Which planet has the most moons?",
    "How do you say thank you in Japanese?",
    "What year did the Berlin Wall fall?",
    "How many bones are in the human body?",
    "What is a good recipe for tomato soup?",
    "Who painted the Mona Lisa?",
    "How do I change a car's engine oil?",
    "What causes the northern lights?",
    "How do I train a puppy to sit?",
    "What is the best way to learn the guitar?",
    "How far away is the Moon?",
    "What is the tallest mountain in Africa?",
]
NEAR_MISS = [  # the documents' subjects, not their facts
    "How do I send a GraphQL query with the tool?",
    "Which HTTP/3 options does the tool support?",
    "Who designed the Zorblax reactor?",
    "What is the plant's annual electricity output?",
    "How do I plant a new hedge from cuttings?",
    "How do I make gluten-free bread?",
    "How do I fix a flat bicycle tyre?",
]


@dataclass
class Row:
    question: str
    kind: str  # answer, off-topic, near-miss
    cosine: float  # the answer's cosine (answer), or the best passage's (the others)
    ranks: dict[str, int | None]  # where each retrieval puts the answer (answer only)


def _embedder(args: argparse.Namespace) -> Any:
    if args.fake:
        from termlm.engine.embedding import FakeEmbedder

        return FakeEmbedder(n_ctx=512)
    from termlm.config import load_settings
    from termlm.engine.embed_loader import open_embedder

    flags: dict[str, Any] = {"embed_model": args.embed_model} if args.embed_model else {}
    return open_embedder(load_settings(flags))


def _measure(root: Path, embedder: Any) -> tuple[list[Row], float, int]:
    """The rows, the best cut-off and its errors; the ranks are taken at that cut-off."""
    from termlm.qa.index import Index
    from termlm.qa.retrieval import DEFAULT_MIN_SCORE, Mode, Ranker
    from termlm.qa.vectors import ChunkVectors
    from termlm.records.types import Source

    for name, text in DOCS.items():
        path = root / "docs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    index = Index.open(root / "index.sqlite")
    try:
        index.sync([Source(str(root / "docs" / n), n) for n in DOCS])
        vectors = ChunkVectors(index, embedder)
        vectors.update()
        rows = []
        for question, answer in ANSWERABLE:
            cosine = vectors.cosines(vectors.query(question), _ids(index, answer))
            rows.append(Row(question, "answer", max(cosine.values()), {}))
        for kind, questions in (("off-topic", OFF_TOPIC), ("near-miss", NEAR_MISS)):
            for question in questions:
                best = vectors.search(vectors.query(question), 1)
                rows.append(Row(question, kind, best[0][1] if best else -1.0, {}))
        # the cut-off tells questions about the documents from unrelated ones; a near
        # miss is about them (often as similar as an answer), so it is left to the model
        cut, wrong = best_cut_off([r.cosine for r in rows if r.kind == "answer"],
                                  [r.cosine for r in rows if r.kind == "off-topic"])
        rankers = {mode.value: Ranker(index, mode, None if mode is Mode.bm25 else vectors,
                                      min_score=DEFAULT_MIN_SCORE, min_similarity=cut)
                   for mode in Mode}
        for row, (question, answer) in zip(rows, ANSWERABLE, strict=False):
            for mode, ranker in rankers.items():
                names = [p.name for p in ranker.candidates(question)]
                row.ranks[mode] = names.index(answer) + 1 if answer in names else None
        return rows, cut, wrong
    finally:
        index.close()


def _ids(index: Any, name: str) -> list[int]:
    return [int(r[0]) for r in index.conn.execute(
        "SELECT id FROM chunks WHERE path LIKE ?", ("%" + name,))]


def best_cut_off(positives: list[float], negatives: list[float]) -> tuple[float, int]:
    """The cut-off with the fewest errors (a positive below it, a negative at or above
    it), and that number; among equals, the middle of the widest gap between scores."""
    values = sorted({*positives, *negatives})
    candidates = [(a + b) / 2 for a, b in itertools.pairwise(values)]
    candidates = [values[0] - 0.01, *candidates, values[-1] + 0.01]

    def errors(t: float) -> int:
        return sum(p < t for p in positives) + sum(n >= t for n in negatives)

    fewest = min(errors(t) for t in candidates)
    good = [t for t in candidates if errors(t) == fewest]
    # the widest run of equally good cut-offs: its middle has the most margin
    runs: list[list[float]] = []
    for t in good:
        if runs and candidates.index(t) == candidates.index(runs[-1][-1]) + 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    widest = max(runs, key=lambda run: run[-1] - run[0])
    return round((widest[0] + widest[-1]) / 2, 3), fewest


def _summary(values: list[float]) -> str:
    if len(values) < 2:
        return " ".join(f"{v:.3f}" for v in values)
    q = statistics.quantiles(values, n=4)
    return (f"min {min(values):.3f}  q1 {q[0]:.3f}  median {q[1]:.3f}  q3 {q[2]:.3f}  "
            f"max {max(values):.3f}")


def report(rows: list[Row], cut: float, wrong: int, top_k: int, model: str
           ) -> dict[str, Any]:
    positives = [r.cosine for r in rows if r.kind == "answer"]
    recall: dict[str, float] = {}
    for mode in ("bm25", "vector", "hybrid"):
        hits = 0
        for r in rows:
            rank = r.ranks.get(mode)
            if rank is not None and rank <= top_k:
                hits += 1
        recall[mode] = hits / len(positives)
    near = [r.cosine for r in rows if r.kind == "near-miss"]
    return {"model": model, "cut_off": cut, "errors": wrong, "questions": len(rows),
            "near_misses_caught": sum(c < cut for c in near),
            "answers": _summary(positives),
            "off_topic": _summary([r.cosine for r in rows if r.kind == "off-topic"]),
            "near_miss": _summary([r.cosine for r in rows if r.kind == "near-miss"]),
            f"answer_in_top_{top_k}": recall,
            "rows": [{"question": r.question, "kind": r.kind, "cosine": round(r.cosine, 4),
                      "ranks": r.ranks} for r in rows]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embed-model", help="embedding model (default: minilm, the default)")
    parser.add_argument("--top-k", type=int, default=4, help="passages given to the model")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    embedder = _embedder(args)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows, cut, wrong = _measure(Path(tmp), embedder)
        result = report(rows, cut, wrong, args.top_k, embedder.info.name)
    finally:
        embedder.close()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model {result['model']}: {len(rows)} questions")
    for r in rows:
        ranks = " ".join(f"{m}={'-' if v is None else v}" for m, v in r.ranks.items())
        print(f"  {r.cosine:6.3f}  {r.kind:9}  {r.question}" + (f"   [{ranks}]" if ranks else ""))
    print(f"answers    {result['answers']}")
    print(f"off-topic  {result['off_topic']}")
    print(f"near-miss  {result['near_miss']}")
    tried = len(rows) - len(NEAR_MISS)
    print(f"cut-off {result['cut_off']}: {result['errors']} of {tried} answers and off-topic "
          f"questions on the wrong side; {result['near_misses_caught']} of {len(NEAR_MISS)} "
          "near misses below it")
    shares = ", ".join(f"{m} {v:.0%}" for m, v in result[f"answer_in_top_{args.top_k}"].items())
    print(f"answer among the {args.top_k} passages given, at that cut-off: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
