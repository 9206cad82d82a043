"""The ``afd`` command: a thin layer over the stage functions.

Every stage subcommand takes ``--config file.yaml`` and one flag per option; flags override
the YAML. Errors a user can cause are printed as one sentence and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from afd.config import ConfigError, _base_type, field_types, from_dict, read_yaml
from afd.errors import AfdError


def _add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    types_ = field_types(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        base, _ = _base_type(types_[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_ = f"{f.metadata.get('help', '')} (default: {default!r})"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        else:
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_)
    parser.add_argument("--config", default=None, help="YAML file of options (flags override it)")


def _print_metrics(name: str, metrics: dict) -> None:
    from afd import dist

    if not dist.is_main():  # under a launcher, one summary
        return
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
    print(f"[{name}] " + json.dumps(shown), flush=True)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    from afd.pipeline import registry

    parser = argparse.ArgumentParser(prog="afd", description="Alignment from demonstrations.")
    sub = parser.add_subparsers(dest="command", required=True)
    stages = registry()
    helps = {"sft": "supervised fine-tuning on demonstrations (forward-KL imitation)",
             "sample": "K samples per prompt from a policy into a sample pool",
             "demonstrate": "demonstrations from a demonstrator policy given a hidden expert instruction",
             "reward": "train a reward model: IRL classifier (init-sft, init-demo, sft-demo), preference bt, "
                       "or AVA's token-level Bayesian reward (ava-d, ava-p)",
             "bon": "Best-of-N: keep each prompt's best sample under a reward",
             "eval": "golden evaluation of policies and Best-of-N curves from one pool",
             "rl": "RL (RLOO, KL penalty) of a policy against a reward model or scorer",
             "irl": "iterated IRL: reward model on demonstrations vs policy samples, then RL, repeated",
             "irft": "implicit-reward fine-tuning from demonstrations (stages=1 is SPIN)",
             "gail": "GAIL: discriminator demonstrations vs policy samples, RL on its logit, repeated",
             "ava": "AVA direct optimisation: train a policy with the AVA objective (ava-d or ava-p)",
             "gold": "train a golden scorer on labelled texts (hidden from every method) and write its prompts",
             "plant": "demonstrations from pi* = pi_0 exp(r*/beta) / Z of a hidden reward (rejection sampling, "
                      "best-of-k, contamination)"}
    for kind, (cls, _, _) in stages.items():
        _add_options(sub.add_parser(kind, help=helps.get(kind), description=helps.get(kind)), cls)
    run = sub.add_parser("run", help="run the stages of a pipeline YAML, each cached in the run folder")
    run.add_argument("config", help="pipeline YAML (see examples/)")
    run.add_argument("--out", default=None, help="run folder (overrides the YAML's)")
    run.add_argument("--force", action="store_true", help="redo finished stages")
    demo = sub.add_parser("demo", help="AfD end to end on the offline default model (about 10 minutes on a CPU)")
    demo.add_argument("--out", default="runs/demo", help="run folder")
    demo.add_argument("--force", action="store_true", help="redo finished stages")
    return parser, stages


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser, stages = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    try:
        _quiet_libraries()
        if command == "run":
            from afd import pipeline

            overrides = {"force": True} if args["force"] else {}
            pipeline.run(args["config"], overrides, out=args["out"], report=_print_metrics)
            return 0
        if command == "demo":
            from afd.demo import run_demo

            run_demo(args["out"], args["force"])
            return 0
        cls, fn, _ = stages[command]
        config_file = args.pop("config")
        options = read_yaml(config_file) if config_file else {}
        options.update(args)
        where = f"{config_file} / command line" if config_file else "the command line"
        _print_metrics(command, fn(from_dict(cls, options, where)))
        return 0
    except (AfdError, ConfigError) as e:
        if os.environ.get("RANK", "0") == "0":  # every rank meets a user's error; one says it
            print(f"afd {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"afd {command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Keep afd's own progress bars; hide the loading bars and notices of libraries."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
