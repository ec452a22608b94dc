"""The ``dasi`` command: one sub-command per pipeline stage (what dvc.yaml runs) plus tools."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dasi.atomic import write_json
from dasi.config import ConfigError

app = typer.Typer(help="dasi (다시): reproducible synthetic-data Korean-English LMs.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
logs_app = typer.Typer(help="Read published run logs.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")

ParamsOpt = Annotated[Path, typer.Option(help="params file (selects the profile, overrides it)")]
ProfilesOpt = Annotated[Path, typer.Option(help="folder of profiles")]


@app.command("config")
def config_cmd(out: Path = Path("data/config"), params: ParamsOpt = Path("params.yaml"),
               profiles: ProfilesOpt = Path("configs")) -> None:
    """Validate every section of the profile and write each one resolved (the DAG's first stage)."""
    from dasi.sections import write_sections

    summary = write_sections(out, params, profiles)
    typer.echo(f"config: profile {summary['profile']}: {len(summary['sections'])} sections valid -> {out}")


@app.command()
def teacher(out: Path = Path("data/teachers"), params: ParamsOpt = Path("params.yaml"),
            profiles: ProfilesOpt = Path("configs")) -> None:
    """Turn each configured teacher (package GGUF, hub id, folder) into a folder vLLM loads."""
    from dasi.stage import run_stage
    from data_gen import teacher as stage

    run_stage("teacher", {"teacher": stage.TeachersConfig}, [], [out],
              lambda cfg, log: stage.run(cfg, out, log), params, profiles)


@app.command()
def seeds(out: Path = Path("data/seeds"), params: ParamsOpt = Path("params.yaml"),
          profiles: ProfilesOpt = Path("configs")) -> None:
    """Collect seed documents and build generation requests (Parquet)."""
    from dasi.stage import run_stage
    from data_gen import seeds as stage
    from data_gen.teacher import TeachersConfig

    run_stage("seeds", {"seeds": stage.SeedsConfig, "teacher": TeachersConfig}, [Path(stage.TEMPLATES_DIR)],
              [out], lambda cfg, teachers, log: stage.run(cfg, teachers, out, log), params, profiles)


@app.command()
def generate(requests: Path = Path("data/seeds/requests.parquet"), teachers: Path = Path("data/teachers"),
             out: Path = Path("data/generated"),
             launcher: Annotated[str | None, typer.Option(
                 help="local | slurm (default: params.yaml / profile)")] = None,
             dry_run: Annotated[bool, typer.Option(
                 help="print what would be launched (the Slurm array scripts), generate nothing")] = False,
             restart: Annotated[bool, typer.Option(
                 help="delete finished work made from other inputs and start over")] = False,
             params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """Answer every request with its teacher on vLLM: shards from independent tasks, resumable."""
    from dasi.config import resolve_params
    from dasi.stage import load_sections, run_stage
    from data_gen import generate as stage

    chosen = check_launcher(launcher or resolve_params(params, profiles)["launcher"], ("local", "slurm"))
    if dry_run:  # nothing runs, so nothing is logged
        cfgs, logging, _ = load_sections({"generate": stage.GenerateConfig}, params, profiles)
        typer.echo(stage.run(cfgs["generate"], requests, teachers, out, None, launcher=chosen,
                             logs_dir=logging.logs_dir, dry_run=True)["dry_run"])
        return
    # The run log hashes the teachers' manifests (they hold every weights hash) and the output
    # manifest (it holds every shard's hash), not the weights and shards again.
    inputs = [requests, *sorted(teachers.glob("*/teacher.json"))]
    outputs = [out / stage.MANIFEST_FILE, out / stage.CARD_FILE]
    try:
        run_stage("generate", {"generate": stage.GenerateConfig}, inputs, outputs,
                  lambda cfg, log: stage.run(cfg, requests, teachers, out, log, launcher=chosen,
                                             logs_dir=log.logging.logs_dir, restart=restart),
                  params, profiles)
    except stage.FingerprintMismatch as e:
        print(f"dasi: generate: {e}", file=sys.stderr)
        sys.exit(3)


def check_launcher(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"launcher = {value!r}: allowed: {', '.join(allowed)}")
    return value


@app.command()
def plan(what: Annotated[str, typer.Argument(help="what to plan: generate | pretrain")],
         measured: Annotated[Path | None, typer.Option(
             help="generate: a generate run folder (logs/generate/<run>) whose tokens/s to use")] = None,
         mfu: Annotated[float, typer.Option(
             min=0.01, max=1.0, help="pretrain: assumed model FLOPs utilisation")] = 0.40,
         peak_tflops: Annotated[float | None, typer.Option(
             min=1.0, help="pretrain: dense peak TFLOP/s of one GPU (default: pretrain.peak_tflops, "
             "else the H100's bf16 989)")] = None,
         gpu_memory: Annotated[float, typer.Option(
             min=1.0, help="pretrain: GiB of memory a GPU has")] = 80.0,
         attention: Annotated[str, typer.Option(
             help="pretrain: fused (SDPA/Transformer Engine, the GPU default) | unfused (megatron's "
             "DotProductAttention: stores the s x s matrices)")] = "fused",
         as_json: Annotated[bool, typer.Option("--json", help="pretrain: one JSON object, no table")] = False,
         params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """Print the scale plan: generate (requests, tokens, GPU-hours of synthetic data) or pretrain
    (parameters, memory per GPU, tokens/s/GPU, days to the token budget)."""
    from dasi.config import resolve_params

    if what == "generate":
        from data_gen import plan as stage

        typer.echo(stage.render(stage.make_plan(resolve_params(params, profiles), measured)))
    elif what == "pretrain":
        from pretrain import plan as stage

        if measured is not None:
            raise typer.BadParameter("--measured is for `plan generate`")
        if attention not in ("fused", "unfused"):
            raise typer.BadParameter(f"--attention: fused or unfused (got {attention!r})")
        p = stage.make_plan(resolve_params(params, profiles), mfu=mfu, peak=peak_tflops,
                            gpu_memory_gib=gpu_memory, attention=attention)
        typer.echo(stage.to_json(p) if as_json else stage.render(p))
    else:
        raise typer.BadParameter(f"can plan: generate, pretrain (got {what!r})")


@app.command()
def curate(seeds_file: Path = Path("data/seeds/documents.parquet"),
           generated: Path = Path("data/generated"), out: Path = Path("data/curated"),
           stats: Path = Path("metrics/curate.json"),
           launcher: Annotated[str | None, typer.Option(
               help="local | slurm (default: params.yaml / profile)")] = None,
           dry_run: Annotated[bool, typer.Option(
               help="print what would be launched (each pass's Slurm array script), curate nothing")] = False,
           params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """Filter, deduplicate (exact + MinHash), decontaminate and split natural + synthetic documents
    as datatrove passes; sharded output, resumable; write curation stats."""
    from dasi.config import resolve_params
    from dasi.stage import load_sections, run_stage
    from data_gen import curate as stage
    from evals.evaluate import EvaluateConfig

    chosen = check_launcher(launcher or resolve_params(params, profiles)["launcher"], ("local", "slurm"))
    sections = {"curate": stage.CurateConfig, "evaluate": EvaluateConfig}
    if dry_run:  # nothing runs, so nothing is logged
        cfgs, _, _ = load_sections(sections, params, profiles)
        typer.echo(stage.run(cfgs["curate"], seeds_file, generated, out, stats, None,
                             eval_tasks=cfgs["evaluate"].tasks, launcher=chosen, dry_run=True)["dry_run"])
        return
    # The run log hashes the manifest (it holds every shard's hash), not the shards again.
    run_stage("curate", sections, [seeds_file, generated], [out / "_manifest.json", stats],
              lambda cfg, evaluate, log: stage.run(cfg, seeds_file, generated, out, stats, log,
                                                   eval_tasks=evaluate.tasks, launcher=chosen),
              params, profiles)


@app.command()
def tokenizer(curated: Path = Path("data/curated"),
              out: Path = Path("data/tokenizer"), metrics: Path = Path("metrics/tokenizer.json"),
              params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """Train the byte-level BPE tokenizer and report its efficiency beside reference tokenizers."""
    from dasi.stage import run_stage
    from pretrain import tokenizer as stage

    run_stage("tokenizer", {"tokenizer": stage.TokenizerConfig}, [curated], [out, metrics],
              lambda cfg, log: stage.run(cfg, curated, out, metrics, log), params, profiles)


@app.command()
def pack(curated: Path = Path("data/curated"),
         tokenizer_dir: Path = Path("data/tokenizer"), out: Path = Path("data/packed"),
         mix: Annotated[Path, typer.Option(help="tokens and epochs per source (a DVC metric)")] = Path(
             "metrics/mix.json"),
         params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """Tokenize curated shards into megatron-core .bin/.idx files, a blend manifest and the mix
    report; a source repeated more than pack.max_epochs times by the pretraining budget stops it."""
    from dasi.model_config import ModelConfig
    from dasi.stage import run_stage
    from pretrain import pack as stage
    from pretrain.config import PretrainConfig
    from pretrain.mix import token_budget

    def work(cfg, train, model, log):
        budget = token_budget(train.train_steps, train.global_batch, model.seq_length)
        return stage.run(cfg, budget, curated, tokenizer_dir, out, mix, log)

    run_stage("pack", {"pack": stage.PackConfig, "pretrain": PretrainConfig, "model": ModelConfig},
              [curated, tokenizer_dir], [out, mix], work, params, profiles)


@app.command("sft-data")
def sft_data(generated: Path = Path("data/generated"), out: Path = Path("data/sft/teacher_chats.parquet"),
             stats: Path = Path("metrics/sft_data.json"), params: ParamsOpt = Path("params.yaml"),
             profiles: ProfilesOpt = Path("configs")) -> None:
    """Turn the teacher's answers to instructions (generate's sft requests) into filtered chats."""
    from dasi.stage import run_stage
    from data_gen import sft_data as stage

    run_stage("sft-data", {"sft_data": stage.SftDataConfig}, [generated], [out, stats],
              lambda cfg, log: stage.run(cfg, generated, out, stats, log), params, profiles)


@app.command()
def pretrain(packed: Path = Path("data/packed/manifest.json"), out: Path = Path("data/checkpoints"),
             metrics: Path = Path("metrics/pretrain.json"),
             launcher: Annotated[str | None, typer.Option(
                 help="local | torchrun | slurm (default: params.yaml / profile)")] = None,
             dry_run: Annotated[bool, typer.Option(
                 help="print the launch command / sbatch script, train nothing")] = False,
             restart: Annotated[bool, typer.Option(
                 help="delete the checkpoints and train from step 0 (also: DASI_RESTART=1)")] = False,
             allow_code_change: Annotated[bool, typer.Option(
                 help="resume although the training code changed (logged; data, model and optimisation "
                      "must match); also: DASI_ALLOW_CODE_CHANGE=1")] = False,
             params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """Train, resume or reuse the megatron-core GPT on the packed data; checkpoints + metrics."""
    import os

    from dasi.config import resolve_params
    from dasi.model_config import ModelConfig
    from dasi.resume import FingerprintMismatch
    from dasi.stage import load_sections, run_stage
    from pretrain import stage

    env_restart = os.environ.get("DASI_RESTART", "0")
    if env_restart not in ("0", "1"):
        raise ConfigError(f"DASI_RESTART = {env_restart!r}: allowed: 1 (start over), 0")
    restart = restart or env_restart == "1"  # so that `DASI_RESTART=1 dvc repro pretrain` starts over
    env_code = os.environ.get("DASI_ALLOW_CODE_CHANGE", "0")
    if env_code not in ("0", "1"):
        raise ConfigError(f"DASI_ALLOW_CODE_CHANGE = {env_code!r}: allowed: 1 (resume across a code "
                          "change), 0")
    allow_code_change = allow_code_change or env_code == "1"
    chosen = check_launcher(launcher or resolve_params(params, profiles)["launcher"],
                            ("local", "torchrun", "slurm"))
    if dry_run:  # nothing runs, so nothing is logged
        cfgs, _, _ = load_sections({"pretrain": stage.PretrainConfig, "model": ModelConfig}, params,
                                   profiles)
        typer.echo(stage.run(cfgs["model"], cfgs["pretrain"], packed, out, None, launcher=chosen,
                             dry_run=True)["dry_run"])
        return
    try:
        summary = run_stage("pretrain", {"pretrain": stage.PretrainConfig, "model": ModelConfig},
                            [packed], [out],
                            lambda cfg, model, log: stage.run(model, cfg, packed, out, log, launcher=chosen,
                                                              restart=restart,
                                                              allow_code_change=allow_code_change),
                            params, profiles)
    except FingerprintMismatch as e:
        print(f"dasi: pretrain: {e}", file=sys.stderr)
        sys.exit(3)
    # The metrics file is hashed into dvc.lock and the release: wall time and the number of
    # launches differ between an interrupted run and an uninterrupted one, so they stay in the
    # run log's summary (logs/pretrain/<run>/summary.json).
    write_json(metrics, {k: v for k, v in summary.items() if k not in stage.HISTORY_KEYS})


@app.command()
def export(checkpoints: Path = Path("data/checkpoints"), tokenizer_dir: Path = Path("data/tokenizer"),
           packed: Path = Path("data/packed/manifest.json"), out: Path = Path("data/hf/base"),
           metrics: Path = Path("metrics/export.json"), params: ParamsOpt = Path("params.yaml"),
           profiles: ProfilesOpt = Path("configs")) -> None:
    """Megatron checkpoint -> Hugging Face LlamaForCausalLM folder, with a logit-parity report."""
    from dasi.model_config import ModelConfig
    from dasi.stage import run_stage
    from pretrain import export as stage

    run_stage("export", {"export": stage.ExportConfig, "model": ModelConfig},
              [checkpoints, tokenizer_dir], [out, metrics],
              lambda cfg, model, log: stage.run(cfg, model, checkpoints, tokenizer_dir, out, metrics,
                                                log, manifest=packed), params, profiles)


@app.command("import-hf")
def import_hf(hf_dir: Annotated[Path, typer.Argument(help="HF Llama folder (config.json + safetensors)")],
              out_dir: Annotated[Path, typer.Argument(help="checkpoint folder to write (must not exist)")],
              max_logit_diff: Annotated[float, typer.Option(
                  help="fail when megatron and HF logits differ more")] = 1e-4,
              parity_tokens: Annotated[int, typer.Option(help="tokens of the parity check")] = 16,
              params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """HF Llama -> megatron checkpoint (model weights only) for pretrain.init_from, parity-checked."""
    from dasi.model_config import ModelConfig
    from dasi.stage import run_stage
    from pretrain import import_hf as stage

    try:
        report = run_stage("import-hf", {"model": ModelConfig}, [hf_dir], [out_dir],
                           lambda model, log: stage.run(model, hf_dir, out_dir, log, max_logit_diff,
                                                        parity_tokens), params, profiles)
    except (FileExistsError, stage.ParityError) as e:
        print(f"dasi: import-hf: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, FileExistsError) else 1)
    typer.echo(f"import-hf: {hf_dir} -> {out_dir}: max |logit diff| {report['max_abs_logit_diff']:.3g} "
               f"over {report['parity_tokens']} tokens ({report['dtype']})")


@app.command()
def sft(base: Path = Path("data/hf/base"), tokenizer_dir: Path | None = None,
        extra_chats: Annotated[list[Path] | None, typer.Option(help="extra chats/1 files")] = None,
        out: Path = Path("data/hf/sft"), metrics: Path = Path("metrics/sft.json"),
        launcher: Annotated[str | None, typer.Option(
            help="local | torchrun | slurm (default: params.yaml / profile; one rank: in-process)")] = None,
        dry_run: Annotated[bool, typer.Option(
            help="print the launch command / sbatch script, train nothing")] = False,
        params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """Instruction-tune an HF model folder on the seed (+ teacher) bilingual chats (sft.parallel ranks)."""
    from dasi.config import resolve_params
    from dasi.stage import load_sections, run_stage
    from instruct import stage

    chosen = check_launcher(launcher or resolve_params(params, profiles)["launcher"],
                            ("local", "torchrun", "slurm"))
    if dry_run:  # nothing runs, so nothing is logged
        cfgs, logging, _ = load_sections({"sft": stage.SFTConfig}, params, profiles)
        typer.echo(stage.dry_run(cfgs["sft"], Path(logging.logs_dir), chosen))
        return
    extra = list(extra_chats or [])
    inputs = [base, stage.SEED_FILE, *extra] + ([tokenizer_dir] if tokenizer_dir else [])
    run_stage("sft", {"sft": stage.SFTConfig}, inputs, [out, metrics],
              lambda cfg, log: stage.run(cfg, base, tokenizer_dir, extra, out, metrics, log, launcher=chosen),
              params, profiles)  # a failed torchrun / Slurm job: JobFailed, exit 6 (main)


@app.command("adapt-vocab")
def adapt_vocab(curated: Path = Path("data/curated"), out: Path = Path("data/adapt/init"),
                metrics: Path = Path("metrics/adapt/vocab.json"),
                params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """Adaptation path: train a Korean BPE, merge it into the English base's tokenizer (old ids
    unchanged), grow the embeddings and initialise the new rows by sub-token decomposition."""
    from adapt import vocab_stage as stage
    from adapt.config import AdaptConfig
    from dasi.stage import run_stage

    run_stage("adapt-vocab", {"adapt": AdaptConfig}, [curated], [out, metrics],
              lambda cfg, log: stage.run_vocab(cfg, curated, out, metrics, log), params, profiles)


@app.command("adapt-train")
def adapt_train(phase: Annotated[str, typer.Argument(
                    help="embed_head | odd_layers | even_layers | lora | baseline")],
                base: Annotated[Path | None, typer.Option(
                    help="the previous phase's folder (default for baseline: adapt.base)")] = None,
                curated: Path = Path("data/curated"),
                out: Annotated[Path | None, typer.Option(help="default data/adapt/<phase>")] = None,
                work: Annotated[Path | None, typer.Option(
                    help="checkpoints a resume starts from (default data/adapt/work/<phase>)")] = None,
                metrics: Annotated[Path | None, typer.Option(
                    help="default metrics/adapt/<phase>.json")] = None,
                launcher: Annotated[str | None, typer.Option(
                    help="local | torchrun | slurm (default: the profile's; one rank: in-process)")] = None,
                dry_run: Annotated[bool, typer.Option(
                    help="print the launch command / sbatch script, train nothing")] = False,
                params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """Adaptation path: one training phase from the previous phase's model, or the baseline arm
    (the base with its own tokenizer, as many tokens as all phases together), over adapt.parallel
    ranks."""
    from adapt import train as stage
    from adapt.config import AdaptConfig
    from dasi.config import resolve_params
    from dasi.stage import load_sections, run_stage

    chosen = check_launcher(launcher or resolve_params(params, profiles)["launcher"],
                            ("local", "torchrun", "slurm"))
    if dry_run:  # nothing runs, so nothing is logged
        cfgs, logging, _ = load_sections({"adapt": AdaptConfig}, params, profiles)
        typer.echo(stage.dry_run(cfgs["adapt"], phase, Path(logging.logs_dir), chosen))
        return
    out = out or Path("data/adapt") / phase
    work = work or Path("data/adapt/work") / phase
    metrics = metrics or Path("metrics/adapt") / f"{phase}.json"
    run_stage(f"adapt-{phase.replace('_', '-')}", {"adapt": AdaptConfig},
              [curated] + ([base] if base else []), [out, work, metrics],
              lambda cfg, log: stage.run(cfg, phase, base, curated, out, work, metrics, log, launcher=chosen),
              params, profiles)  # a failed torchrun / Slurm job: JobFailed, exit 6 (main)


@app.command("adapt-eval")
def adapt_eval(adapted: Path = Path("data/adapt/lora"), baseline: Path = Path("data/adapt/baseline"),
               vocab_metrics: Path = Path("metrics/adapt/vocab.json"),
               phase_metrics: Annotated[list[Path] | None, typer.Option(
                   help="metrics of each phase and the baseline")] = None,
               curated: Path = Path("data/curated"), out: Path = Path("metrics/adapt.json"),
               params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """Adaptation path: token ratio, and bits per byte of the base, the adapted model and the
    baseline arm on held-out text, with issue 11's goals checked."""
    from adapt import compare as stage
    from adapt.config import PHASES, AdaptConfig
    from dasi.stage import run_stage

    phase_metrics = phase_metrics or [Path("metrics/adapt") / f"{p}.json" for p in (*PHASES, "baseline")]
    inputs = [adapted, baseline, vocab_metrics, *phase_metrics, curated]
    run_stage("adapt-eval", {"adapt": AdaptConfig}, inputs, [out],
              lambda cfg, log: stage.run_eval(cfg, adapted, baseline, vocab_metrics, phase_metrics,
                                              curated, out, log), params, profiles)


@app.command("evaluate")
def evaluate_cmd(
        model: Annotated[list[str] | None, typer.Option(
            help="NAME=FOLDER, repeatable (default: base=data/hf/base sft=data/hf/sft)")] = None,
        curated: Path = Path("data/curated"), tokenizer_dir: Path | None = None,
        out: Path = Path("metrics/eval.json"),
        work_dir: Annotated[Path | None, typer.Option(
            help="keep lm-eval's caches here (default: a temporary folder)")] = None,
        params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """The profile's tasks (lm-eval, local item files, HumanEval in a sandbox) and held-out bits per
    byte for each model folder and for the profile's peers (evaluate.peers), side by side."""
    from dasi.stage import run_stage
    from evals import evaluate as stage

    model = model or ["base=data/hf/base", "sft=data/hf/sft"]
    bad = [m for m in model if "=" not in m]
    if bad:
        raise typer.BadParameter(f"--model expects NAME=FOLDER, got {bad}")
    models = {name: Path(path) for name, path in (m.split("=", 1) for m in model)}
    inputs = [*models.values(), curated] + ([tokenizer_dir] if tokenizer_dir else [])
    run_stage("evaluate", {"evaluate": stage.EvaluateConfig}, inputs, [out],
              lambda cfg, log: stage.run(cfg, models, curated, tokenizer_dir, out, work_dir, log),
              params, profiles)


@app.command()
def release(action: Annotated[str | None, typer.Argument(
                help="verify: check the release folder FOLDER instead of writing one")] = None,
            folder: Annotated[Path | None, typer.Argument(help="verify: a release folder")] = None,
            base: Path = Path("data/hf/base"), sft_model: Path = Path("data/hf/sft"),
            metrics_dir: Path = Path("metrics"), lock: Path = Path("dvc.lock"),
            generated_manifest: Path = Path("data/generated/_manifest.json"),
            config_dir: Path = Path("data/config"), dvc_yaml: Path = Path("dvc.yaml"),
            out: Path | None = None, params: ParamsOpt = Path("params.yaml"),
            profiles: ProfilesOpt = Path("configs")) -> None:
    """Write releases/<profile>/ (model and data cards, metrics, dvc.lock, checksums, model folders);
    `dasi release verify FOLDER` checks one: every problem on a line of its own, exit 1."""
    from dasi import release as stage

    if action is not None:
        if action != "verify" or folder is None:
            print(f"dasi: release: unknown action {action!r}: allowed: verify FOLDER", file=sys.stderr)
            sys.exit(2)
        problems = stage.verify(folder)
        for problem in problems:
            print(f"{folder}: {problem}", file=sys.stderr)
        if problems:
            sys.exit(1)
        typer.echo(f"release verify: {folder}: ok (checksums, dvc.lock, models load)")
        return

    from dasi.config import resolve_params
    from dasi.model_config import ModelConfig
    from dasi.stage import run_stage

    tree = resolve_params(params, profiles)
    out = out or Path("releases") / tree["profile"]
    cmd, deps = stage.stage_definition(dvc_yaml, params)
    inputs = stage.ReleaseInputs(
        profile=tree["profile"], description=tree.get("description", ""),
        models={"base": base, "sft": sft_model},
        metric_files=[metrics_dir / f"{n}.json" for n in stage.METRICS],
        lock_file=lock, stage_cmd=cmd, stage_deps=deps, seeds_config=config_dir / "seeds.json",
        generated_manifest=generated_manifest, pretrain_config=config_dir / "pretrain.json")
    reads = [base, sft_model, lock, *inputs.metric_files, config_dir / "seeds.json",
             config_dir / "pretrain.json", generated_manifest]
    run_stage("release", {"release": stage.ReleaseConfig, "model": ModelConfig}, reads, [out],
              lambda cfg, model, log: stage.run(cfg, model, inputs, out, log), params, profiles)


@app.command("params")
def show_params(section: Annotated[str | None, typer.Argument(help="one section")] = None,
                params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """Print the resolved parameters (profile + params.yaml overrides)."""
    from dasi.config import resolve_params

    tree = resolve_params(params, profiles)
    typer.echo(json.dumps(tree if section is None else tree[section], indent=2, ensure_ascii=False))


@app.command("count-params")
def count_params(params: ParamsOpt = Path("params.yaml"), profiles: ProfilesOpt = Path("configs")) -> None:
    """Print the parameter count of the selected profile's model."""
    from dasi.config import resolve_params, validate_section
    from dasi.model_config import ModelConfig, parameter_count

    tree = resolve_params(params, profiles)
    n = parameter_count(validate_section("model", tree["model"], ModelConfig))
    typer.echo(f"{tree['profile']}: {n:,} parameters ({n / 1e9:.3f} B)")


@logs_app.command("show")
def logs_show(run_dir: Path) -> None:
    """Summarise one run folder: status, config digest, final metrics."""
    from dasi.logview import show

    typer.echo(show(run_dir))


@logs_app.command("compare")
def logs_compare(run_dirs: Annotated[list[Path], typer.Argument(help="two or more run folders")]) -> None:
    """Summaries side by side, plus every config value that differs between the runs."""
    from dasi.logview import compare

    typer.echo(compare(run_dirs))


@logs_app.command("plot")
def logs_plot(run_dirs: Annotated[list[Path], typer.Argument(help="run folders")],
              metric: Annotated[str, typer.Option(help="a key of metrics.jsonl")] = "loss",
              out: Annotated[Path, typer.Option("-o", "--out", help="image")] = Path("plot.png")) -> None:
    """Plot one metric against step for several runs into an image."""
    from dasi.logview import plot

    try:
        typer.echo(plot(run_dirs, metric, out))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@logs_app.command("report")
def logs_report(run_dirs: Annotated[list[Path], typer.Argument(help="run folders (logs/<stage>/<run>)")],
                out: Annotated[Path, typer.Option("-o", "--out", help="HTML file")] = Path("report.html"),
                metrics_dir: Annotated[Path, typer.Option(
                    help="data stats and eval.json (with peers)")] = Path("metrics")) -> None:
    """One self-contained HTML page: curves (runs of a stage overlaid), summaries, data stats, the
    evaluation table with peers, each run's environment."""
    from dasi.report import write_report

    try:
        typer.echo(write_report(run_dirs, out, metrics_dir))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def main() -> None:
    from dasi.determinism import pin_cpu_kernels
    from dasi.integrity import IntegrityError
    from dasi.stage import JobFailed, MissingInputs

    pin_cpu_kernels()  # before any stage imports torch
    try:
        app()
    except ConfigError as e:
        print(f"dasi: config error: {e}", file=sys.stderr)
        sys.exit(2)
    except IntegrityError as e:  # a file differs from what its writer recorded
        print(f"dasi: integrity error: {e}", file=sys.stderr)
        sys.exit(4)
    except MissingInputs as e:
        print(f"dasi: {e}", file=sys.stderr)
        sys.exit(5)
    except JobFailed as e:  # a submitted job ended badly: resubmitting resumes
        print(f"dasi: {e}", file=sys.stderr)
        sys.exit(6)


if __name__ == "__main__":
    main()
