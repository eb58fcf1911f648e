"""The ``unialign`` command line.

Commands:
    unialign losses                      list every objective with its paper
    unialign demo [control]              the main job: align a control policy to simulated
                                         preference feedback on a small default task
    unialign demo lm                     align SmolLM2-135M-Instruct (online DPO, LoRA) to a
                                         programmatic reward on CPU (docs/lm-demo.md)
    unialign train control --config F    any control configuration (oracle / pebble / aparl)
    unialign train lm --config F         offline preference training of a causal LM
    unialign train lm-online --config F  online preference training of a causal LM (sample,
                                         judge, update: online DPO, SPPO, INPO, DNO, Nash-MD)
    unialign train rm --config F         a reward model (scalar, ensemble or GPM head) on
                                         preference pairs, loadable as a judge
    unialign train barfi --config F      BARFI: learn to blend an auxiliary reward with the
                                         primary one (control, docs/barfi.md)
    unialign feedback export STORE OUT   labelled completion comparisons → preference JSONL
    unialign label RUN_DIR_OR_STORE      the labelling web app (docs/labelling.md); also
                                         `label add-annotator STORE NAME` for a login token
    unialign sweep CONFIG                a grid of runs (methods × tasks × seeds) on Ray,
                                         resumable, with a table of 95 % intervals (docs/sweep.md)

Configs are typed (pydantic) and validated here, before anything heavy is built; every
field of a config is also a ``--flag`` that overrides the file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from unialign import __version__
from unialign.config import ConfigError


def _cmd_losses(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from unialign.losses import REGISTRY

    specs = [s for s in REGISTRY.values() if args.family in (None, s.family)]
    table = Table(title=f"unialign objectives ({len(specs)})", show_lines=False)
    # a paper column as wide as its longest single reference ("Rafailov et al. 2023, arXiv
    # 2305.18290"), so a reference is never split across lines: it is what a reader copies
    ref_width = max(len(ref.strip()) for s in specs for ref in s.paper.split(";"))
    for col in ("name", "family", "description", "paper", "hyperparameters"):
        width = min(ref_width, 60) if col == "paper" else None
        table.add_column(col, overflow="fold", no_wrap=col in ("name", "family"), min_width=width)
    for s in sorted(specs, key=lambda s: (s.family, s.name)):
        hp = ", ".join(f"{k}={v}" for k, v in s.hparams.items())
        table.add_row(s.name, s.family, s.description, s.paper, hp)
    Console(width=max(Console().width, 160)).print(table)
    return 0


def _families() -> list[str]:
    from unialign.losses import REGISTRY

    return sorted({s.family for s in REGISTRY.values()})


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.kind == "lm":
        if args.no_oracle:
            print("unialign: error: --no-oracle is for the control demo", file=sys.stderr)
            return 2
        from unialign.lm.demo import run_lm_demo

        summary = run_lm_demo(
            out_dir=args.out or "runs/demo_lm", seed=args.seed, iterations=args.iterations,
            quick=args.quick,
        )  # fmt: skip
        return 130 if summary.get("interrupted") else 0
    if args.iterations is not None:
        print("unialign: error: --iterations is for `unialign demo lm`", file=sys.stderr)
        return 2
    from unialign.control.demo import run_demo

    summary = run_demo(
        out_dir=args.out or "runs/demo", seed=args.seed, quick=args.quick,
        oracle=not args.no_oracle,
    )  # fmt: skip
    return 130 if summary.get("interrupted") else 0


def _cmd_train_control(args: argparse.Namespace) -> int:
    from unialign.config import load_config
    from unialign.control.config import ControlConfig
    from unialign.control.train import train_control

    cfg = load_config(ControlConfig, args.config, _overrides(args, ControlConfig))
    summary = train_control(cfg, resume=args.resume)
    return 130 if summary.get("interrupted") else 0


def _cmd_train_barfi(args: argparse.Namespace) -> int:
    from unialign.config import load_config
    from unialign.control.barfi import BarfiConfig, train_barfi

    cfg = load_config(BarfiConfig, args.config, _overrides(args, BarfiConfig))
    summary = train_barfi(cfg, resume=args.resume)
    return 130 if summary.get("interrupted") else 0


def _cmd_train_lm(args: argparse.Namespace) -> int:
    from unialign.config import load_config
    from unialign.lm.config import LMTrainConfig
    from unialign.lm.train import train_lm

    cfg = load_config(LMTrainConfig, args.config, _overrides(args, LMTrainConfig))
    summary = train_lm(cfg, resume=args.resume)
    return 130 if summary.get("interrupted") else 0


def _cmd_train_rm(args: argparse.Namespace) -> int:
    from unialign.config import load_config
    from unialign.lm.rm import train_rm
    from unialign.lm.rm_config import RMTrainConfig

    cfg = load_config(RMTrainConfig, args.config, _overrides(args, RMTrainConfig))
    summary = train_rm(cfg, resume=args.resume)
    return 130 if summary.get("interrupted") else 0


def _cmd_train_lm_online(args: argparse.Namespace) -> int:
    from unialign.config import load_config
    from unialign.feedback.judges import JudgeError
    from unialign.lm.online import train_lm_online
    from unialign.lm.online_config import LMOnlineConfig

    cfg = load_config(LMOnlineConfig, args.config, _overrides(args, LMOnlineConfig))
    try:
        summary = train_lm_online(cfg, resume=args.resume)
    except JudgeError as e:  # the verdicts stored before the failure stay in the store
        print(f"unialign: judge error: {e}", file=sys.stderr)
        return 1
    return 130 if summary.get("interrupted") else 0


def _cmd_feedback_export(args: argparse.Namespace) -> int:
    from unialign.feedback.export import export_preference_jsonl
    from unialign.feedback.store import FeedbackStoreError

    try:
        report = export_preference_jsonl(
            args.store, args.out, labeler=args.labeler, fmt=args.format
        )
    except FeedbackStoreError as e:
        print(f"unialign: error: {e}", file=sys.stderr)
        return 2
    print(f"unialign: {report}")
    if report.rows == 0:
        print("unialign: warning: no preference rows; `unialign train lm` needs at least one")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from unialign.sweep import load_sweep_config, run_sweep

    cfg = load_sweep_config(args.config)
    outcome = run_sweep(
        cfg, address=args.address, num_cpus=args.num_cpus, serial=args.serial,
        report_only=args.report_only,
    )  # fmt: skip
    if outcome.interrupted:
        return 130
    return 1 if outcome.failed else 0


def _overrides(args: argparse.Namespace, model) -> dict:
    return {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unialign",
        description="Align policies (language models and control agents) to preference feedback.",
    )
    parser.add_argument("--version", action="version", version=f"unialign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "losses", help="list every objective with a one-line description and its paper"
    )
    p.add_argument("--family", choices=_families(), help="only this family")
    p.set_defaults(func=_cmd_losses)

    p = sub.add_parser(
        "demo",
        help="main job: align a Pendulum-v1 policy to a few hundred simulated preference queries "
        "(`demo lm`: align SmolLM2-135M-Instruct with online DPO on CPU)",
    )
    p.add_argument(
        "kind", nargs="?", choices=["control", "lm"], default="control",
        help="control (default): A-PARL on Pendulum-v1; lm: online DPO of SmolLM2-135M-Instruct "
        "(LoRA) to a short-answer reward, about ten minutes on two CPU cores",
    )  # fmt: skip
    p.add_argument(
        "--out", default=None, help="run directory (default: runs/demo, or runs/demo_lm for lm)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quick", action="store_true", help="a much shorter run, for smoke tests")
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle comparison run")
    p.add_argument(
        "--iterations", type=int, default=None, help="lm only: online iterations (default: 8)"
    )
    p.set_defaults(func=_cmd_demo)

    feedback = sub.add_parser("feedback", help="work with a feedback store (SQLite)")
    fsub = feedback.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = fsub.add_parser(
        "export",
        help="write labelled completion comparisons as preference JSONL for `train lm`",
        description="Write a feedback store's labelled completion comparisons as preference "
        "JSONL (prompt/chosen/rejected) that `unialign train lm` reads. Ties and skipped labels "
        "are left out and counted.",
    )
    p.add_argument("store", metavar="STORE", help="feedback store file (SQLite)")
    p.add_argument("out", metavar="OUT.jsonl", help="JSONL file to write")
    p.add_argument("--labeler", help="only this labeller's labels, e.g. human:ada (default: all)")
    p.add_argument(
        "--format",
        choices=["standard", "conversational"],
        help="which pairs to write when the store holds both formats",
    )
    p.set_defaults(func=_cmd_feedback_export)

    from unialign.label.cli import add_label_parser

    add_label_parser(sub)

    p = sub.add_parser(
        "sweep",
        help="run a grid of experiments (methods × tasks × seeds) on Ray and tabulate them",
        description="Run the unfinished cells of a sweep config as Ray tasks (a local instance, "
        "or a cluster with --address), then write table.json, table.md and curve PNGs under "
        "its `out`. Finished cells are skipped on rerun. Exit status 1 when a cell failed "
        "(its traceback is in out/cells/<id>/error.txt). See docs/sweep.md.",
    )
    p.add_argument("config", metavar="CONFIG", help="sweep YAML (docs/sweep.md)")
    p.add_argument(
        "--address", help="a running Ray cluster, e.g. HOST:6379 (overrides ray.address)"
    )
    p.add_argument(
        "--num-cpus", type=int, help="CPUs of the local Ray instance (overrides ray.num_cpus)"
    )
    p.add_argument(
        "--serial", action="store_true", help="run cells one by one in this process (debugging)"
    )
    p.add_argument(
        "--report-only", action="store_true", help="run nothing; report the finished cells"
    )
    p.set_defaults(func=_cmd_sweep)

    train = sub.add_parser("train", help="train from a configuration file")
    tsub = train.add_subparsers(dest="paradigm", metavar="PARADIGM", required=True)
    _add_train_parser(tsub, "control", "preference-based RL on a control task", _cmd_train_control)
    _add_train_parser(tsub, "lm", "offline preference training of a causal LM", _cmd_train_lm)
    _add_train_parser(
        tsub, "lm-online", "online preference training of a causal LM", _cmd_train_lm_online
    )
    _add_train_parser(tsub, "rm", "a reward model on preference pairs", _cmd_train_rm)
    _add_train_parser(
        tsub, "barfi", "BARFI: learn how to blend an auxiliary reward (control)", _cmd_train_barfi
    )
    return parser


def _add_train_parser(tsub, name: str, help_text: str, func) -> None:
    from unialign.config import add_config_flags

    p = tsub.add_parser(name, help=help_text)
    p.add_argument("--config", help="YAML file with the fields below (flags override it)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run directory's last checkpoint"
    )
    try:
        if name == "control":
            from unialign.control.config import ControlConfig as model
        elif name == "rm":
            from unialign.lm.rm_config import RMTrainConfig as model
        elif name == "lm-online":
            from unialign.lm.online_config import LMOnlineConfig as model
        elif name == "barfi":
            from unialign.control.barfi import BarfiConfig as model
        else:
            from unialign.lm.config import LMTrainConfig as model
        add_config_flags(p, model)
    except ImportError:  # pragma: no cover - a partial install
        pass
    p.set_defaults(func=func)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"unialign: configuration error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # bad input: the message names the file, field or parameter
        if os.environ.get("UNIALIGN_DEBUG"):
            raise
        print(f"unialign: error: {e}\n(set UNIALIGN_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unialign: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
