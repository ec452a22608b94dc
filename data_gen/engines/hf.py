"""CPU (or single-GPU) generation with transformers ``generate``: the engine CI runs."""

from __future__ import annotations

import importlib.metadata

import torch

from data_gen.engines.base import Completion, SamplingConfig, TeacherConfig


class TransformersEngine:
    name = "transformers"

    def __init__(self, teacher: TeacherConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.version = importlib.metadata.version("transformers")
        kwargs = {"gguf_file": teacher.gguf_file} if teacher.gguf_file else {}
        loc = teacher.location()
        self.tokenizer = AutoTokenizer.from_pretrained(loc, **kwargs)
        self.tokenizer.padding_side = "left"  # decoder-only batching pads on the left
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = "auto" if teacher.dtype == "auto" else getattr(torch, teacher.dtype)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(loc, dtype=dtype, **kwargs).to(self.device)
        self.model.eval()

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[Completion]:
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(self.device)
        torch.manual_seed(seed)
        greedy = sampling.temperature == 0
        with torch.no_grad():
            out = self.model.generate(
                **batch,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None,
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1]:]
        eos_ids = self.model.generation_config.eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids])
        eos_ids.add(self.tokenizer.eos_token_id)
        results = []
        for row, mask in zip(new.tolist(), batch["attention_mask"], strict=True):
            n = len(row)
            for j, tok in enumerate(row):
                if tok in eos_ids:
                    n = j
                    break
            finish = "stop" if n < len(row) else "length"
            results.append(Completion(
                text=self.tokenizer.decode(row[:n], skip_special_tokens=True).strip(),
                prompt_tokens=int(mask.sum()),
                completion_tokens=n,
                finish_reason=finish,
            ))
        return results
