"""The ``charrnn`` command line: prepare | train | evaluate | sample | run | config.

Every subcommand takes ``--config FILE.yaml`` and trailing ``key=value``
overrides (``train.lr=3e-3`` or just ``lr=3e-3``); ``charrnn config`` prints
every key with its current value.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from charrnn.config import Config, check_batch_split, dump_config, explain_config, load_config
from charrnn.errors import CharRNNError

log = logging.getLogger("charrnn")


def _setup_logging(rank: int = 0) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(message)s"
        if rank == 0
        else f"%(asctime)s [rank {rank}] %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="YAML config with data/model/train sections"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.lr=3e-3 hidden_size=256",
    )


def _config(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    return load_config(args.config, [*args.overrides, *(extra or [])])


def _train_extra(args: argparse.Namespace) -> list[str]:
    """`charrnn train`'s own options as overrides.

    Also read by `charrnn launch` before torchrun starts.
    """
    extra = [f"train.out_dir={args.out_dir}"] if args.out_dir else []
    if args.resume:
        extra.append("train.resume=true")
    return extra


# --------------------------------------------------------------------------- commands


def cmd_prepare(args: argparse.Namespace) -> int:
    from charrnn.data.prepare import prepare

    corpus, tokens = prepare(_config(args))
    print(json.dumps({"corpus": corpus.to_dict(), "tokens": tokens.to_dict()}, indent=2))
    return 0


def _tokens_for_training(args: argparse.Namespace, cfg: Config):
    from charrnn.data.prepare import prepare
    from charrnn.data.tokens import open_token_set

    if args.tokens:
        return open_token_set(args.tokens)
    return prepare(cfg)[1]


def cmd_train(args: argparse.Namespace) -> int:
    from charrnn.distributed.launch import supervise_worker

    # First: a worker whose torchrun agent is killed must not train on unsupervised.
    supervise_worker()
    from charrnn.distributed.group import DistEnv, destroy_process_group
    from charrnn.train.trainer import train

    cfg = _config(args, _train_extra(args))
    env = DistEnv.from_env()
    try:
        result = train(cfg, _tokens_for_training(args, cfg), env)
    except BaseException:
        destroy_process_group()
        raise
    destroy_process_group(together=True)
    if env.is_main and not args.no_summary:
        print(json.dumps(result.to_dict(), indent=2))
    # As a shell reports a process stopped by a signal: 130 for SIGINT, 143 for SIGTERM.
    if result.stopped_by:
        return 128 + signal.Signals[result.stopped_by].value
    return 130 if result.interrupted else 0  # stopped because another rank got a signal


def _split_tokens(
    target: str, split: str, tokens_dir: str | None, payload: dict, vocab, unk_policy: str = "unk"
):
    """Token ids for ``--split val|test|PATH`` of a checkpoint.

    A PATH's unseen characters follow ``unk_policy``.
    """
    import numpy as np

    from charrnn.data.corpus import cache_root, normalise_and_validate
    from charrnn.data.tokens import load_split, open_token_set
    from charrnn.errors import CorpusError

    if split in ("train", "val", "test"):
        folder = tokens_dir or str(
            cache_root(payload["config"]["data"]["cache_dir"] or None)
            / "tokens"
            / payload["tokens"]["key"]
        )
        tokens = open_token_set(folder)
        ids = load_split(tokens, split)
        if len(ids) < 2:
            raise CorpusError(
                f"the {split} split is empty", where=folder, fix="evaluate another split"
            )
        return ids, f"{split} split of {folder}"
    path = Path(split)
    if not path.is_file():
        raise CorpusError(
            "no such split or file",
            where=split,
            fix="use --split val, --split test or a path to a UTF-8 text file",
        )
    text = normalise_and_validate(path.read_bytes(), split)
    return vocab.encode(text, dtype=np.int64, unk_policy=unk_policy, source=str(path)), str(path)


def _unk_policy(cfg: Config, payload: dict) -> str:
    """data.unk_policy as set by --config or key=value.

    Otherwise the one the checkpoint was trained with.
    """
    if "unk_policy" in cfg.data.model_fields_set:
        return cfg.data.unk_policy
    trained = payload.get("config", {}).get("data", {}).get("unk_policy", "unk")
    return trained if trained in ("unk", "error") else "unk"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from charrnn.distributed.launch import supervise_worker

    # First: a worker whose torchrun agent is killed must not run on unsupervised.
    supervise_worker()
    from charrnn.distributed.group import (
        DistEnv,
        destroy_process_group,
        init_process_group,
        pick_device,
    )
    from charrnn.evaluation.evaluate import evaluate_tokens, format_score
    from charrnn.io.checkpoint import load_model, resolve_checkpoint

    cfg = _config(args, [f"train.device={args.device}"] if args.device else [])
    env = DistEnv.from_env()
    device = pick_device(cfg.train.device, env)
    init_process_group(env, device)
    try:
        model, vocab, payload = load_model(args.checkpoint, device)
        ids, described = _split_tokens(
            args.checkpoint, args.split, args.tokens, payload, vocab, _unk_policy(cfg, payload)
        )
        result = evaluate_tokens(model, ids, num_streams=args.streams, device=device, env=env)
    finally:
        destroy_process_group()
    if env.is_main:
        if args.json:
            print(
                json.dumps(
                    {
                        "checkpoint": str(resolve_checkpoint(args.checkpoint)),
                        "split": args.split,
                        "step": payload["step"],
                        **result.to_dict(),
                    }
                )
            )
        else:
            print(f"{described} ({result.chars:,} chars) at step {payload['step']}:")
            print(f"  {format_score(result.to_dict())}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from charrnn.distributed.group import DistEnv, pick_device
    from charrnn.evaluation.sample import SampleSettings, generate
    from charrnn.io.checkpoint import load_model

    device = pick_device(args.device, DistEnv())
    model, vocab, _ = load_model(args.checkpoint, device)
    settings = SampleSettings(
        length=args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        argmax=args.argmax,
        num_samples=args.num_samples,
        seed=args.seed,
        precision=args.precision,
    )
    stream = args.num_samples == 1 and not args.json
    if stream:
        sys.stdout.write(args.prime)
    samples = generate(
        model,
        vocab,
        args.prime,
        settings,
        device=device,
        on_chars=(lambda chars: (sys.stdout.write(chars[0]), sys.stdout.flush()))
        if stream
        else None,
    )
    if args.json:
        print(json.dumps({"prime": args.prime, "samples": samples}))
    elif stream:
        sys.stdout.write("\n")
    else:
        for i, text in enumerate(samples):
            print(f"----- sample {i + 1}/{len(samples)} -----\n{args.prime}{text}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole job in one process: prepare -> train -> evaluate (val, test) -> sample."""
    from charrnn.data.prepare import prepare
    from charrnn.evaluation.evaluate import final_scores
    from charrnn.evaluation.sample import SampleSettings, generate
    from charrnn.fsutil import atomic_write_text
    from charrnn.io.checkpoint import load_model
    from charrnn.registry.report import end_of_run, wandb_where
    from charrnn.train.trainer import train

    cfg = _config(args, [f"train.out_dir={args.out_dir}"] if args.out_dir else [])
    _, tokens = prepare(cfg)
    result = train(cfg, tokens)
    model, vocab, payload = load_model(result.best_checkpoint or result.checkpoint)
    scores, _ = final_scores(
        model,
        tokens,
        num_streams=cfg.train.eval_batch_size,
        known=result.scores_at(payload["step"]),
    )
    sample = generate(
        model,
        vocab,
        args.prime,
        SampleSettings(length=args.length, temperature=0.8, seed=cfg.train.seed),
    )[0]
    run_dir = Path(result.run_dir)
    atomic_write_text(run_dir / "sample.txt", args.prime + sample + "\n")
    paths = [
        ("checkpoint", result.best_checkpoint or result.checkpoint),
        ("sample", str(run_dir / "sample.txt")),
        ("metrics", str(run_dir / "metrics.jsonl")),
        ("W&B run", wandb_where(result.tracking)),
    ]
    sample_title = f"sample (temperature 0.8, model from step {payload['step']})"
    print(
        end_of_run(
            "charrnn run",
            result.step,
            result.train_seconds,
            result.chars_per_s,
            scores,
            sample_title,
            args.prime + sample,
            paths,
        )
    )
    return 0


def _auto_nproc(train_args: list[str], *, read_config: bool) -> int:
    """``--nproc-per-node auto``: the machine's fastest layout for this run's precision.

    Says which and why.
    """
    from charrnn.distributed.machine import auto_nproc

    precision = "auto"
    if read_config:
        train = parse_args(["train", *train_args])
        precision = _config(train, _train_extra(train)).train.precision
    nproc, why = auto_nproc(precision)
    print(f"charrnn launch: --nproc-per-node auto -> {nproc}: {why}", file=sys.stderr, flush=True)
    return nproc


def nproc_arg(value: str) -> int | str:
    """``auto`` or a whole number of processes (an explicit number always wins)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither auto nor a number of processes"
        ) from None


def _check_launch_config(
    train_args: list[str], processes: int, nproc_per_node: int, nnodes: int
) -> None:
    """Read the config as every worker's `charrnn train` will.

    A bad config is refused here, once, before torchrun starts.
    """
    train = parse_args(["train", *train_args])
    check_batch_split(
        _config(train, _train_extra(train)),
        processes,
        layout=f"--nproc-per-node {nproc_per_node} x --nnodes {nnodes}",
        where="charrnn launch",
    )


def cmd_launch(args: argparse.Namespace) -> int:
    from charrnn.distributed.launch import LaunchSpec, run_torchrun, torchrun_command

    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    nproc = args.nproc_per_node
    if nproc == "auto":
        nproc = _auto_nproc(train_args, read_config=not args.print_command)
    spec = LaunchSpec(
        nproc_per_node=nproc,
        nnodes=args.nnodes,
        rdzv_endpoint=args.rdzv_endpoint,
        rdzv_id=args.rdzv_id,
        max_restarts=args.max_restarts,
        local_addr=args.local_addr,
        socket_ifname=args.socket_ifname,
        rdzv_is_host=args.rdzv_is_host,
    )
    # What would run, as a JSON list (tests check the cluster manifests with it).
    if args.print_command:
        print(json.dumps(torchrun_command(spec, train_args)))
        return 0
    if nproc >= 1 and args.nnodes >= 1:  # else torchrun_command refuses them
        _check_launch_config(train_args, nproc * args.nnodes, nproc, args.nnodes)
    return run_torchrun(spec, train_args)


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _config(args)
    print(explain_config(cfg) if args.explain else dump_config(cfg), end="")
    return 0


# --------------------------------------------------------------------------- parser


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="fetch a corpus and tokenise it (cached by content)",
        description=(
            "Fetch data.corpus, validate it, and write vocab + train/val/test token files "
            "to the cache."
        ),
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train or resume a model (runs under torchrun unchanged)",
        description="Train a CharLSTM. Under torchrun every rank runs this same command.",
    )
    p.add_argument("--out-dir", help="run directory (train.out_dir)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest valid checkpoint in the run directory",
    )
    p.add_argument(
        "--tokens",
        metavar="DIR",
        help="a prepared token directory (skips prepare; use it under torchrun)",
    )
    p.add_argument(
        "--no-summary",
        action="store_true",
        help="print no JSON summary at the end (it is in the run's train_summary.json either way)",
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="bits/char of a checkpoint on a split or a text file",
        description="Exact mean loss over a whole split, in nats/char, bits/char and perplexity.",
    )
    p.add_argument("checkpoint", help="a .pt checkpoint or a run directory (uses its best.pt)")
    p.add_argument(
        "--split",
        default="val",
        help="val, test, train, or a path to a UTF-8 text file (default: val)",
    )
    p.add_argument(
        "--tokens",
        metavar="DIR",
        help="token directory (default: the one the checkpoint was trained on)",
    )
    p.add_argument(
        "--streams", type=int, default=128, help="parallel evaluation streams (default: 128)"
    )
    p.add_argument("--device", help="auto, cpu or cuda (train.device; default: auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_config_args(p)
    p.epilog = (
        "data.unk_policy=error refuses a PATH with characters outside the vocabulary "
        "(default: the checkpoint's own policy; unk maps them to <unk>)"
    )
    p.set_defaults(func=cmd_evaluate)


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate text from a checkpoint",
        description="Generate text with the step-wise (LSTMCell) view of a trained model.",
    )
    p.add_argument("checkpoint", help="a .pt checkpoint or a run directory (uses its best.pt)")
    p.add_argument("--prime", default="\n", help="text to start from (default: a newline)")
    p.add_argument(
        "--length", type=int, default=500, help="characters to generate per sample (default: 500)"
    )
    p.add_argument(
        "--temperature", type=float, default=0.8, help="softmax temperature (default: 0.8)"
    )
    p.add_argument(
        "--top-k", type=int, default=0, help="sample from the k most likely characters (0: all)"
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    p.add_argument(
        "--num-samples", type=int, default=1, help="independent samples, generated as one batch"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    p.add_argument(
        "--argmax",
        action="store_true",
        help="greedy decoding (deterministic; ignores temperature/top-k/top-p)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help=(
            "matrix products per character: auto (bf16 from 16 samples where the hardware "
            "has native bf16, else fp32), fp32 or bf16; the cell state stays fp32"
        ),
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of streaming text")
    p.set_defaults(func=cmd_sample)


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="prepare -> train -> evaluate -> sample in one go",
        description=(
            "The whole job in one process, ending with val/test bits/char, a sample and the paths."
        ),
    )
    p.add_argument("--out-dir", help="run directory (train.out_dir)")
    p.add_argument("--prime", default="ROMEO:\n", help="prime for the final sample")
    p.add_argument("--length", type=int, default=400, help="length of the final sample")
    _add_config_args(p)
    p.set_defaults(func=cmd_run)


def _add_launch(sub) -> None:
    p = sub.add_parser(
        "launch",
        help="run `charrnn train` under torchrun (many processes, many machines)",
        description=(
            "Build and run the torchrun command for `charrnn train`, streaming its output; "
            "Ctrl-C stops every worker."
        ),
        epilog=(
            "example: charrnn launch --nproc-per-node 2 --max-restarts 1 "
            "-- --out-dir runs/ddp max_steps=2000"
        ),
    )
    p.add_argument(
        "--nproc-per-node",
        type=nproc_arg,
        default="auto",
        help=(
            "worker processes on this machine, or auto (default): one per GPU; on a CPU the "
            "fastest layout measured (one process with all cores on AVX-512, two on AVX2)"
        ),
    )
    p.add_argument(
        "--nnodes", type=int, default=1, help="machines in the job (each runs this same command)"
    )
    p.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="c10d rendezvous endpoint (required with --nnodes > 1)",
    )
    p.add_argument("--rdzv-id", metavar="ID", help="job id shared by all nodes")
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help=(
            "restart the worker group this many times after a failure "
            "(resumes from the newest checkpoint)"
        ),
    )
    p.add_argument(
        "--local-addr",
        metavar="ADDR",
        help="this node's address for rendezvous (multi-homed hosts)",
    )
    p.add_argument(
        "--socket-ifname",
        metavar="IFACE",
        help=(
            "network interface for gloo/NCCL traffic "
            "(sets GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME)"
        ),
    )
    p.add_argument(
        "--rdzv-is-host",
        action="store_true",
        help=(
            "this node hosts the rendezvous store (needed when the endpoint is a DNS name "
            "of this node, e.g. pod 0 of a Job)"
        ),
    )
    p.add_argument(
        "--print-command",
        action="store_true",
        help="print the torchrun command as JSON instead of running it (reads no config)",
    )
    p.add_argument(
        "train_args", nargs=argparse.REMAINDER, help="-- then the arguments of `charrnn train`"
    )
    p.set_defaults(func=cmd_launch)


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print the effective configuration as YAML")
    _add_config_args(p)
    p.add_argument(
        "--explain",
        action="store_true",
        help="print every key with its value, what it does and what it accepts",
    )
    p.set_defaults(func=cmd_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="charrnn", description="Character-level stacked-LSTM language models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_prepare,
        _add_train,
        _add_evaluate,
        _add_sample,
        _add_run,
        _add_launch,
        _add_config,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A torchrun worker: the agent reports a failure's traceback.
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(_main)(argv)
    # torch is imported only by the commands that need it: `prepare` and `--help` start fast.
    return _main(argv)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # key=value after an option (`charrnn evaluate RUN --split test data.unk_policy=error`):
    # argparse hands positionals after the first option group back unparsed; they are
    # overrides too.
    if (
        rest
        and hasattr(args, "overrides")
        and all("=" in r and not r.startswith("-") for r in rest)
    ):
        args.overrides = [*args.overrides, *rest]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    _setup_logging(int(os.environ.get("RANK", 0)))
    try:
        return args.func(args)
    except CharRNNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
