"""The ``afd`` command: a thin layer over the stage functions.

Every stage subcommand takes ``--config file.yaml`` and one flag per option; flags override
the YAML. Errors a user can cause are printed as one sentence and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from afd.config import ConfigError, from_sources, read_yaml
from afd.errors import AfdError


class _Bool(argparse.Action):
    """A yes/no option: ``--x`` (true), ``--no-x`` (false), or ``--x true|false`` as TRL's
    scripts take it."""

    def __init__(self, option_strings, dest, **kw):
        strings = list(option_strings) + ["--no-" + s[2:] for s in option_strings]
        super().__init__(strings, dest, nargs="?", **kw)

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, "false" if option_string.startswith("--no-") else (value or "true"))


class _Formatter(argparse.HelpFormatter):
    """``--lr LR``, and ``--x, --no-x`` for yes/no options, however many values they take."""

    def _format_action_invocation(self, action):
        if isinstance(action, _Bool):
            return ", ".join(action.option_strings)
        if action.option_strings and action.nargs == "+":
            return f"{action.option_strings[0]} {action.metavar}"
        return super()._format_action_invocation(action)


PEER = "peer:"  # dest prefix of other libraries' names (afd.aliases), translated with the YAML


def _add_options(parser: argparse.ArgumentParser, options: list) -> None:
    """One flag per option (``--max-length``; ``--max_length`` is read too, unlisted), then every
    other library's name afd reads (afd.aliases), unlisted."""
    from afd import aliases

    own = set()
    for o in options:
        own.add(o.name)
        flags = ["--" + o.name.replace("_", "-")] + (["--" + o.name] if "_" in o.name else [])
        help_ = f"{o.help} (default: {o.default!r})"
        for i, flag in enumerate(flags):
            shown = help_ if i == 0 else argparse.SUPPRESS
            if o.kind == "bool":
                parser.add_argument(flag, action=_Bool, dest=o.name, default=argparse.SUPPRESS, help=shown)
            else:  # several values (TRL's `--lora_target_modules q_proj v_proj`) are joined with commas
                parser.add_argument(flag, dest=o.name, nargs="+", default=argparse.SUPPRESS,
                                    metavar=o.name.upper(), help=shown)
    for name in (*aliases.RENAMED, *aliases.CONVERTED, *aliases.UNSUPPORTED, *aliases.NO_EFFECT):
        if name in own:
            continue
        for flag in {"--" + name, "--" + name.replace("_", "-")} - set(parser._option_string_actions):
            parser.add_argument(flag, dest=PEER + name, nargs="*", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help="YAML file of options (flags override it)")


def _flag_values(args: dict[str, Any], options: list) -> dict[str, Any]:
    """The parsed flags as option: value (a list of several values joined with commas, except
    for a list option; a peer flag given bare is true)."""
    kinds = {o.name: o.kind for o in options}
    out = {}
    for dest, value in args.items():
        name = dest.removeprefix(PEER)
        if isinstance(value, list):
            if not value:
                value = "true"
            elif len(value) == 1:
                value = value[0]
            elif kinds.get(name) in ("str", "dict", "list") or dest.startswith(PEER):
                value = ",".join(value) if kinds.get(name) != "list" else value
        out[name] = value
    return out


def _print_metrics(name: str, metrics: dict) -> None:
    from afd import dist

    if not dist.is_main():  # under a launcher, one summary
        return
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
    print(f"[{name}] " + json.dumps(shown), flush=True)


HELPS = {"sft": "supervised fine-tuning on demonstrations (forward-KL imitation)",
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


PEERS_HELP = ("Every option is also read with underscores (--max_length), and under TRL's, transformers', OpenRLHF's "
              "and Axolotl's names (--learning_rate, --num_train_epochs, --per_device_train_batch_size, "
              "--model_name_or_path, --dataset_name, --output_dir, --use_peft, --input_template, ...); their "
              "options that change nothing afd does are named once and ignored, and those afd cannot honour "
              "stop the stage with one sentence (see README, 'Coming from TRL, OpenRLHF or Axolotl').")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The afd command's parser. Each stage's options are read from its config class's source
    (afd.config.declared_options), so neither building it nor ``--help`` imports torch,
    transformers or TRL; with ``argv``, only the stage it names (if any) gets its options."""
    from afd.config import declared_options
    from afd.pipeline import STAGES

    parser = argparse.ArgumentParser(prog="afd", description="Alignment from demonstrations.")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for kind, (module, cls, _) in STAGES.items():
        stage = sub.add_parser(kind, help=HELPS.get(kind), description=HELPS.get(kind), formatter_class=_Formatter,
                               usage=f"afd {kind} [--config FILE.yaml] [--OPTION VALUE ...]", epilog=PEERS_HELP)
        if argv is None or wanted == kind:
            _add_options(stage, declared_options(module, cls))
    run = sub.add_parser("run", help="run the stages of a pipeline YAML, each cached in the run folder")
    run.add_argument("config", help="pipeline YAML (see examples/)")
    run.add_argument("--out", default=None, help="run folder (overrides the YAML's)")
    run.add_argument("--force", action="store_true", help="redo finished stages")
    study = sub.add_parser("study", help="claims over seeds: each seed's pipeline, bootstrap intervals and verdicts "
                                         "decided by a rule fixed in the study YAML (afd.study)")
    study.add_argument("config", help="study YAML (see examples/study-*.yaml)")
    study.add_argument("--out", default=None, help="study folder (overrides the YAML's)")
    study.add_argument("--seeds", default=None, help="run only these seeds (e.g. 0-2 or 0,3); the claims are "
                                                     "decided on them")
    demo = sub.add_parser("demo", help="AfD end to end on the offline default model (about 10 minutes on a CPU)")
    demo.add_argument("--out", default="runs/demo", help="run folder")
    demo.add_argument("--force", action="store_true", help="redo finished stages")
    return parser


def stage_config(command: str, args: dict[str, Any]):
    """The config of stage ``command`` from its parsed flags (``args``, with ``config``: the YAML
    file they override): what ``afd COMMAND ...`` runs."""
    from afd.config import declared_options
    from afd.pipeline import STAGES, stage

    cls, _ = stage(command)
    args = dict(args)
    config_file = args.pop("config", None)
    flags = _flag_values(args, declared_options(*STAGES[command][:2]))
    sources = ([(read_yaml(config_file), str(config_file))] if config_file else []) + [(flags, "the command line")]
    where = f"{config_file} / command line" if config_file else "the command line"
    return from_sources(cls, sources, where)


def parse(argv: list[str]):
    """``afd STAGE FLAGS...`` as (stage, its config), without running it."""
    args = vars(build_parser(argv).parse_args(argv))
    command = args.pop("command")
    return command, stage_config(command, args)


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if "LOCAL_RANK" in os.environ:  # every rank leaves the process group together
        from afd.dist import finish

        return finish(code)
    return code


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "LOCAL_RANK" in os.environ:  # a worker of torchrun / accelerate launch ends with its launcher
        from afd.dist import watch_launcher

        watch_launcher()
    argv = sys.argv[1:] if argv is None else argv
    args = vars(build_parser(argv).parse_args(argv))
    command = args.pop("command")
    out = None
    try:
        _quiet_libraries()
        if command == "run":
            from afd import pipeline

            overrides = {"force": True} if args["force"] else {}
            pipeline.run(args["config"], overrides, out=args["out"], report=_print_metrics)
            return 0
        if command == "study":
            from afd.study import run_study, seeds_of

            seeds = seeds_of(args["seeds"], "--seeds") if args["seeds"] else None
            summary = run_study(args["config"], out=args["out"], seeds=seeds,
                                report=lambda where, name, m: _print_metrics(f"{where}: {name}", m))
            from afd import dist

            if dist.is_main():
                from afd.study import table

                print(table(summary["claims"], summary["seeds"]))
            return 0
        if command == "demo":
            from afd.demo import run_demo

            run_demo(args["out"], args["force"])
            return 0
        from afd.pipeline import stage

        _, fn = stage(command)
        cfg = stage_config(command, args)
        out = cfg.out
        _print_metrics(command, fn(cfg))
        return 0
    except (AfdError, ConfigError) as e:
        if os.environ.get("RANK", "0") == "0":  # every rank meets a user's error; one says it
            _close_bars()
            print(f"afd {command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        where = out if command not in ("run", "demo", "study") else args.get("out")
        if not no_space(e, where or "."):
            raise
        if os.environ.get("RANK", "0") == "0":
            _close_bars()
            what = f"while writing {e.filename}" if getattr(e, "filename", None) else f"on the device of {where or '.'}"
            print(f"afd {command}: error: no space left {what}; free some space and run the same command again: it "
                  f"resumes from what was written whole", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"afd {command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _close_bars() -> None:
    """End the progress bars a stage left open when it stopped, so its error is a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def no_space(e: BaseException, folder: str) -> bool:
    """Whether ``e`` is a write that failed for want of disk space: ENOSPC or EDQUOT from Python,
    safetensors' "os error 28", or torch.save's zip writer failing (its message names no cause)
    on a device with no space left where the run writes."""
    import errno
    import shutil

    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    if "No space left on device" in text or "os error 28" in text:
        return True
    if isinstance(e, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text):
        path = os.path.abspath(folder)
        while not os.path.exists(path):
            path = os.path.dirname(path)
        return shutil.disk_usage(path).free < 1 << 20
    return False


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
