"""Sampling and evaluation on a trained checkpoint, through the library and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import CPU_BF16, requires_cpu_bf16, run_env, tiny_config

from charrnn.data.prepare import prepare
from charrnn.data.tokens import load_split
from charrnn.data.vocab import Vocab
from charrnn.evaluation.evaluate import evaluate_tokens
from charrnn.evaluation.sample import (
    SampleSettings,
    filter_logits,
    generate,
    matmul_dtype,
    sample_tokens,
    uniforms,
)
from charrnn.io.checkpoint import load_model
from charrnn.model.lstm import CharLSTM, ModelShape, Stepper
from charrnn.train.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import os

    from helpers import make_text

    root = tmp_path_factory.mktemp("trained")
    os.environ["CHARRNN_CACHE"] = str(root / "cache")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(60_000))
    cfg = tiny_config(corpus, root / "run", max_steps=40)
    _, tokens = prepare(cfg)
    result = train(cfg, tokens)
    yield result, tokens, root
    del os.environ["CHARRNN_CACHE"]


def _charrnn(*args, cache) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *args],
        env=run_env(CHARRNN_CACHE=str(cache)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_seeded_sampling_is_reproducible_and_argmax_deterministic(trained):
    result, _, _ = trained
    model, vocab, _ = load_model(result.run_dir)
    settings = SampleSettings(length=80, temperature=1.0, num_samples=3, seed=7)
    a = generate(model, vocab, "ROMEO:\n", settings)
    b = generate(model, vocab, "ROMEO:\n", settings)
    assert a == b and len(a) == 3 and all(len(s) == 80 for s in a)
    assert len(set(a)) > 1  # independent streams
    c = generate(model, vocab, "ROMEO:\n", SampleSettings(length=80, seed=8))
    assert c[0] != a[0]
    greedy = [
        generate(model, vocab, "ROMEO:\n", SampleSettings(length=60, argmax=True, seed=s))[0]
        for s in (1, 2)
    ]
    assert greedy[0] == greedy[1]


def test_generation_continues_the_model_state(trained):
    """Sampling's first step sees the same distribution as the fused model after the prime."""
    result, _, _ = trained
    model, vocab, _ = load_model(result.run_dir)
    prime = "JULIET:\nThe"
    with torch.no_grad():
        logits, _ = model(torch.as_tensor(vocab.encode(prime)).unsqueeze(0))
    expected = vocab.chars[logits[0, -1].argmax().item() - 1]
    assert (
        generate(model, vocab, prime, SampleSettings(length=1, argmax=True, precision="fp32"))[0]
        == expected
    )


def test_filter_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [[True, False, False, True]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isinf(filter_logits(probs, 0, 0.7)).tolist() == [[False, False, True, True]]


def test_evaluate_cli_json_and_text_file(trained, tmp_path):
    result, tokens, root = trained
    model, _, _ = load_model(result.run_dir)
    direct = evaluate_tokens(model, load_split(tokens, "test"), num_streams=32)
    out = _charrnn(
        "evaluate",
        result.run_dir,
        "--split",
        "test",
        "--streams",
        "32",
        "--json",
        cache=root / "cache",
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert (
        got["bpc"] == pytest.approx(direct.bpc, abs=1e-9)
        and got["chars"] == tokens.num_tokens["test"] - 1
    )

    text = tmp_path / "held_out.txt"
    text.write_text("ROMEO:\nSweet night, fair day.\n")
    out = _charrnn("evaluate", result.checkpoint, "--split", str(text), cache=root / "cache")
    assert out.returncode == 0 and "bits/char" in out.stdout, out.stderr


def test_sample_cli_streams_and_is_reproducible(trained):
    result, _, root = trained
    runs = [
        _charrnn(
            "sample",
            result.run_dir,
            "--prime",
            "ROMEO:",
            "--length",
            "50",
            "--seed",
            "3",
            cache=root / "cache",
        )
        for _ in range(2)
    ]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.startswith("ROMEO:")
    batch = _charrnn(
        "sample",
        result.run_dir,
        "--num-samples",
        "4",
        "--length",
        "20",
        "--json",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        cache=root / "cache",
    )
    assert len(json.loads(batch.stdout)["samples"]) == 4


def test_cli_errors_are_clear(trained, tmp_path):
    _, _, root = trained
    missing = _charrnn("evaluate", str(tmp_path / "nope.pt"), cache=root / "cache")
    assert (
        missing.returncode == 2
        and "checkpoint not found" in missing.stderr
        and "Traceback" not in missing.stderr
    )
    bad = _charrnn("prepare", "data.corpus=" + str(tmp_path / "nope.txt"), cache=root / "cache")
    assert bad.returncode == 2 and "file not found" in bad.stderr
    typo = _charrnn("config", "train.lrr=1", cache=root / "cache")
    assert typo.returncode == 2 and "unknown key 'train.lrr'" in typo.stderr


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "sample", "run", "config"])
def test_every_command_has_help(command):
    out = subprocess.run(
        [sys.executable, "-m", "charrnn", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "usage: charrnn " + command in out.stdout


def test_inverse_cdf_sampling_follows_the_distribution():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.0, 0.2]).expand(20_000, -1)
    tokens = sample_tokens(
        probs, uniforms(1, len(probs), torch.Generator().manual_seed(0))[0]
    ).squeeze(1)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert freq[1] == 0 and freq[3] == 0  # zero-probability tokens never come out
    assert torch.allclose(freq, probs[0], atol=0.015)
    one_hot = torch.zeros(3, 5).index_fill_(1, torch.tensor([4]), 1.0)  # all mass on the last token
    # the smallest and largest draws
    extremes = torch.tensor([[torch.finfo(torch.float32).tiny], [0.5], [1 - 2**-24]])
    assert sample_tokens(one_hot, extremes).tolist() == [[4], [4], [4]]


def _untrained(vocab: Vocab) -> CharLSTM:
    torch.manual_seed(0)
    return CharLSTM(
        ModelShape(vocab.size, embedding_dim=16, hidden_size=32, num_layers=2, dropout=0.0)
    ).eval()


def test_batched_streams_are_seeded_independent_rows_and_every_column_is_streamed():
    vocab = Vocab.from_text("ROMEO:\nSweet night, fair day. café—naïve\n")
    model = _untrained(vocab)
    settings = SampleSettings(length=40, num_samples=16, seed=3, temperature=1.5)
    columns: list[list[str]] = []
    streamed = generate(model, vocab, "ROMEO:\n", settings, on_chars=columns.append)
    # the same with and without on_chars
    assert generate(model, vocab, "ROMEO:\n", settings) == streamed
    assert len(columns) == 40 and all(len(col) == 16 for col in columns)
    assert ["".join(col[row] for col in columns) for row in range(16)] == streamed
    assert len(set(streamed)) == 16  # one uniform draw per row and step: no two rows alike
    assert (
        generate(
            model,
            vocab,
            "ROMEO:\n",
            SampleSettings(length=40, num_samples=16, seed=4, temperature=1.5),
        )
        != streamed
    )
    # Rows never mix: greedy decoding gives every row of a batch the one-stream text.
    # (fp32: bf16 products may round a row differently in a batch of another size)
    one = generate(
        model, vocab, "ROMEO:\n", SampleSettings(length=40, argmax=True, precision="fp32")
    )
    assert (
        generate(
            model,
            vocab,
            "ROMEO:\n",
            SampleSettings(length=40, argmax=True, num_samples=5, precision="fp32"),
        )
        == one * 5
    )


def test_unseeded_generation_leaves_the_global_rng_alone():
    vocab = Vocab.from_text("abc\n")
    model = _untrained(vocab)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    assert len(generate(model, vocab, "a", SampleSettings(length=5, num_samples=2))) == 2
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- bf16 generation


def _stepwise(
    model: CharLSTM, ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, Stepper]:
    with torch.no_grad():
        stepper = Stepper(model, model.initial_state(ids.shape[0]), matmul_dtype=dtype)
        return torch.stack(
            [stepper.advance(ids[:, t]).float() for t in range(ids.shape[1])], 1
        ), stepper


def test_bf16_products_with_an_fp32_cell_state_stay_the_same_model(trained):
    """Generation's bf16 path against the fused fp32 model.

    The bf16 path: bf16 matrix products, fp32 gates and cell state.

    bf16 matmuls run on every CPU (emulated where there are no bf16 instructions),
    so this holds everywhere. Measured on this tiny trained model over 4 x 400
    characters (2-core EPYC, avx512_bf16): nats/char differ by < 1e-5 and the largest
    log-probability gap is 0.014 (mean 0.007, the same over the first and the last
    100 steps; 0.015 before the gates ran in fp32); the bounds leave room for other kernels.
    """
    result, tokens, _ = trained
    model, _, _ = load_model(result.run_dir)
    ids = torch.as_tensor(load_split(tokens, "val")[:1601].astype("int64"))
    inputs, targets = ids[:-1].view(4, 400), ids[1:].view(4, 400)
    with torch.no_grad():
        fused, _ = model(inputs)
    stepwise, stepper = _stepwise(model, inputs, torch.bfloat16)
    assert stepper.c.dtype == torch.float32 and all(
        s.dtype == torch.float32 for s in stepper.state()
    )
    nats = [
        torch.nn.functional.cross_entropy(x.flatten(0, 1), targets.flatten()).item()
        for x in (fused, stepwise)
    ]
    assert abs(nats[0] - nats[1]) < 2e-3, nats
    gap = (fused.log_softmax(-1) - stepwise.log_softmax(-1)).abs().amax(-1)  # [stream, step]
    assert gap.max() < 0.06, gap.max()
    # no drift that grows with the sample: c stays fp32
    assert gap[:, -100:].mean() < 2 * gap[:, :100].mean() + 2e-3
    exact, _ = _stepwise(model, inputs, torch.float32)
    torch.testing.assert_close(exact, fused, atol=1e-5, rtol=0)  # fp32 is still exact


@requires_cpu_bf16
def test_auto_generates_in_bf16_where_the_cpu_has_it(trained):
    result, _, root = trained
    assert (
        matmul_dtype("auto", "cpu", streams=64) == torch.bfloat16
        and matmul_dtype("fp32", "cpu", streams=64) == torch.float32
    )
    # one stream reads weights: bf16 was slower there
    assert matmul_dtype("auto", "cpu", streams=1) == torch.float32
    assert matmul_dtype("bf16", "cpu", streams=1) == torch.bfloat16  # asked for: always
    out = _charrnn(
        "sample",
        result.run_dir,
        "--num-samples",
        "3",
        "--length",
        "30",
        "--json",
        "--precision",
        "bf16",
        "--seed",
        "1",
        cache=root / "cache",
    )
    assert out.returncode == 0, out.stderr
    assert [len(s) for s in json.loads(out.stdout)["samples"]] == [30, 30, 30]


@pytest.mark.skipif(CPU_BF16, reason="this CPU has bf16 kernels")
def test_bf16_generation_without_bf16_kernels_is_refused_clearly(trained):
    result, _, root = trained
    assert matmul_dtype("auto", "cpu") == torch.float32
    out = _charrnn("sample", result.run_dir, "--precision", "bf16", cache=root / "cache")
    assert (
        out.returncode == 2
        and "sampling precision=bf16" in out.stderr
        and "use precision auto" in out.stderr
    ), out.stderr


def test_each_sample_of_a_batch_can_have_its_own_temperature(trained):
    """What the W&B sample rows rely on: one batch per prompt, a temperature per row."""
    result, _, _ = trained
    model, vocab, _ = load_model(result.run_dir)
    greedy = generate(
        model, vocab, "ROMEO:\n", SampleSettings(length=60, argmax=True, precision="fp32")
    )[0]
    cold, hot = generate(
        model,
        vocab,
        "ROMEO:\n",
        SampleSettings(
            length=60, temperature=(1e-4, 50.0), num_samples=2, seed=5, precision="fp32"
        ),
    )
    assert cold == greedy  # near-zero temperature: the most likely character every time
    assert hot != greedy
    with pytest.raises(ValueError, match="2 temperatures for 3 samples"):
        generate(model, vocab, "a", SampleSettings(length=5, temperature=(0.5, 1.0), num_samples=3))
