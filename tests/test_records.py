"""The typed records that cross task boundaries survive Prefect's persisted results.

A cache hit returns them equal.
"""

from __future__ import annotations

import uuid

import pytest

pytestmark = [pytest.mark.prefect]


def _records():
    from charrnn.config import load_config
    from charrnn.data.corpus import CorpusRef
    from charrnn.data.tokens import TokenSet
    from charrnn.distributed.launch import LaunchSpec
    from charrnn.registry.lines import Decision, ProductionModel, Promotion
    from charrnn.registry.report import RunReport, RunResult, Sample, Scores
    from charrnn.train.trainer import TrainResult

    score = {"loss_nats": 1.5, "bpc": 2.16, "perplexity": 4.48, "chars": 1000}
    corpus = CorpusRef("shakespeare", "ab" * 32, "/cache/corpora/x.txt", 100, 100)
    tokens = TokenSet(
        "/cache/tokens/k", "k" * 24, "ab" * 32, 65, "uint8", {"train": 90, "val": 5, "test": 5}
    )
    trained = TrainResult(
        "/runs/r",
        "/runs/r/c.pt",
        None,
        20,
        0,
        score,
        None,
        1.5,
        1e4,
        12.0,
        tracking={"mode": "disabled"},
    )
    scores = Scores("/runs/r/best.pt", 20, val=score)
    production = ProductionModel(
        "/reg/m.pt",
        "cd" * 32,
        "/runs/r/best.pt",
        "/runs/r",
        2.1,
        "shakespeare",
        "ab" * 32,
        "2026-01-01T00:00:00+0000",
    )
    promotion = Promotion(
        Decision(True, 2.1, None, "test split of k", 999, "no production model yet"), production
    )
    report = RunReport(
        "r",
        "/runs/r",
        corpus,
        tokens,
        trained,
        scores,
        promotion,
        LaunchSpec(nproc_per_node=2),
        load_config(None, ["hidden_size=32"]),
        3.0,
    )
    result = RunResult(
        "/runs/r",
        "/runs/r/best.pt",
        20,
        score,
        None,
        "/runs/r/samples.txt",
        "ROMEO:",
        "/runs/r/report.md",
        "off",
        promoted=True,
    )
    return [corpus, tokens, trained, scores, promotion, Sample("A", 1, 0.8, "AB"), report, result]


def test_records_round_trip_through_persisted_task_results(prefect_server):
    from prefect import flow, task

    calls = []
    run = uuid.uuid4().hex

    @task(
        cache_key_fn=lambda context, parameters: f"charrnn-records-test-{run}-{parameters['i']}",
        persist_result=True,
    )
    def make(i: int):
        calls.append(i)
        return _records()[i]

    @flow
    def twice(n: int) -> tuple[list, list]:
        return [make(i) for i in range(n)], [make(i) for i in range(n)]

    expected = _records()
    first, second = twice(len(expected))
    assert calls == list(range(len(expected)))  # the second round came from the persisted results
    assert first == expected and second == expected
    assert [type(r) for r in second] == [type(r) for r in expected]
    assert second[6].markdown("w") == expected[6].markdown("w")
