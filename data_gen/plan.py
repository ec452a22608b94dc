"""``dasi plan generate``: how much synthetic Korean a profile needs, and what it costs.

The budget comes from the profile itself: Korean training tokens = pretraining tokens
(train_steps x global batch x seq_length) x the Korean share of the pack blend; the synthetic
part of those is ``generate.plan.synthetic_ko_share`` (KORMo-10B reports 68.7% of its Korean
data synthetic). Cost uses a configured output tokens/s per GPU, or one measured in a generate
run's log (``--measured logs/generate/<run>``).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, PositiveFloat, PositiveInt

from dasi.config import ConfigError, validate_section
from dasi.model_config import ModelConfig
from dasi.strict import StrictModel


class PlanConfig(StrictModel):
    teacher: str = Field(description="the teacher that writes the Korean documents")
    synthetic_ko_share: float = Field(0.687, gt=0, le=1, description="synthetic share of Korean tokens")
    completion_tokens_per_request: PositiveInt = Field(description="expected tokens written per request")
    tokens_per_s_per_gpu: PositiveFloat = Field(description="output tokens/s of one GPU (configured)")


def measured_rate(run_dir: Path, teacher: str) -> tuple[float, str]:
    """Output tokens/s per device of ``teacher`` in a finished generate run."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line]
    done = [e for e in events if e["event"] == "teacher_done" and e["teacher"] == teacher]
    if not done:
        raise ConfigError(f"{run_dir}: no finished generation of teacher {teacher!r} in events.jsonl")
    cfg = json.loads((run_dir / "config.json").read_text())
    serving = cfg.get("serving", {}).get(teacher, {})
    devices = serving.get("tensor_parallel_size", 1) * serving.get("pipeline_parallel_size", 1)
    tasks = min(cfg.get("tasks", 1), done[-1]["shards"])
    rate = done[-1]["completion_tokens"] / done[-1]["seconds"] / (devices * tasks)
    env = json.loads((run_dir / "env.json").read_text())
    gpus = (env.get("accelerator") or {}).get("gpus") or []
    return rate, f"measured in {run_dir} ({gpus[0] if gpus else 'CPU, per replica'})"


def make_plan(tree: dict, measured: Path | None = None) -> dict:
    from data_gen.generate import GenerateConfig
    from pretrain.config import PretrainConfig

    gen = validate_section("generate", tree["generate"], GenerateConfig)
    if gen.plan is None:
        raise ConfigError(f"profile {tree['profile']!r} has no generate.plan (teacher, "
                          "completion_tokens_per_request, tokens_per_s_per_gpu)")
    pre = validate_section("pretrain", tree["pretrain"], PretrainConfig)
    model = validate_section("model", tree["model"], ModelConfig)
    blend_ko = tree["pack"]["blend"]["ko"] / sum(tree["pack"]["blend"].values())
    train_tokens = pre.train_steps * pre.global_batch * model.seq_length
    ko_tokens = train_tokens * blend_ko
    synthetic = round(ko_tokens * gen.plan.synthetic_ko_share)
    rate, rate_source = gen.plan.tokens_per_s_per_gpu, "configured (generate.plan.tokens_per_s_per_gpu)"
    if measured is not None:
        rate, rate_source = measured_rate(Path(measured), gen.plan.teacher)
    serving = gen.serving_for(gen.plan.teacher)
    gpus_per_replica = serving.tensor_parallel_size * serving.pipeline_parallel_size
    gpu_hours = synthetic / rate / 3600
    requests = -(-synthetic // gen.plan.completion_tokens_per_request)
    return {
        "profile": tree["profile"], "teacher": gen.plan.teacher,
        "pretrain_tokens": train_tokens, "korean_share_of_blend": blend_ko, "korean_tokens": ko_tokens,
        "synthetic_ko_share": gen.plan.synthetic_ko_share, "synthetic_ko_tokens": synthetic,
        "completion_tokens_per_request": gen.plan.completion_tokens_per_request,
        "requests": requests, "shards": -(-requests // gen.shard_size),
        "tokens_per_s_per_gpu": rate, "rate_source": rate_source,
        "gpu_hours": gpu_hours, "gpus_per_replica": gpus_per_replica, "tasks": gen.tasks,
        "wall_hours": gpu_hours / (gpus_per_replica * gen.tasks),
    }


def render(p: dict) -> str:
    return "\n".join([
        f"generation plan for profile {p['profile']} (teacher {p['teacher']})",
        f"  pretraining tokens        {p['pretrain_tokens']:.4g}",
        f"  Korean share of the blend {p['korean_share_of_blend']:.3f} -> "
        f"{p['korean_tokens']:.4g} Korean tokens",
        f"  synthetic share           {p['synthetic_ko_share']:.3f} -> "
        f"{p['synthetic_ko_tokens']:.4g} synthetic tokens",
        f"  requests                  {p['requests']:,} at {p['completion_tokens_per_request']} tokens each "
        f"({p['shards']:,} shards)",
        f"  throughput                {p['tokens_per_s_per_gpu']:.4g} tokens/s per GPU, {p['rate_source']}",
        f"  cost                      {p['gpu_hours']:,.0f} GPU-hours; {p['wall_hours']:,.1f} h wall on "
        f"{p['tasks']} replicas x {p['gpus_per_replica']} GPUs",
        json.dumps(p),
    ])
