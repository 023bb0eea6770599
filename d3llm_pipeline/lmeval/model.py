"""Our diffusion-LM decoders as an lm-evaluation-harness model, registered under the name `d3llm`.

From Python (lm-eval 0.4.13):

    import lm_eval
    from d3llm_pipeline.lmeval import D3LLMEvalModel, task_manager
    model = D3LLMEvalModel(pretrained="outputs/artifacts/teacher", decode="d3llm", threshold=0.5)
    out = lm_eval.simple_evaluate(model=model, tasks=["arith"], task_manager=task_manager(arith_n=200))
    model.summary()   # {"n", "total_nfe", "total_tokens", "tpf", "wall_s", "by_task": {...}}

From the shell: `python -m d3llm_pipeline.lmeval --model d3llm --model_args pretrained=<dir>,decode=d3llm ...`
(see __main__.py; lm-eval has no plugin entry point for models, so the registration must be imported first).

Only `generate_until` is supported (d3LLM's benchmarks are all generative). Requests are decoded in batches of
`batch_size` with `decoding.decode`; each output is cut at the first EOS and at the first `until` string. Per
request we record NFE (forwards, counted in full), generated tokens (before the first EOS / stop string, the
d3LLM way) and the batch's wall time; TPF = Σ tokens / Σ NFE (decoding/metrics.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from d3llm_pipeline.config.decode_presets import model_section, pipeline_task_of, resolve_decode
from d3llm_pipeline.decoding import DecodeSpec, decode, tokens_per_forward
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.evaluation import compile_warmup
from d3llm_pipeline.models.families import EMBEDDED_FAMILY

log = logging.getLogger(__name__)

SPEC_FIELDS = {f.name: f for f in dataclasses.fields(DecodeSpec)}
_TRUE, _FALSE, _NONE = ("true", "1", "yes"), ("false", "0", "no"), ("none", "null", "")


def _coerce(name: str, value: Any) -> Any:
    """A model_args value as the DecodeSpec field's type (the CLI hands some over as strings)."""
    default = SPEC_FIELDS[name].default
    text = str(value).strip().lower()
    if isinstance(default, bool) or name == "accept_global_best":
        if value is None or isinstance(value, bool):
            return value
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        if name == "accept_global_best" and text in _NONE:
            return None
        raise ConfigError(f"model_args {name}={value!r}: expected true or false")
    if value is None or (isinstance(value, str) and text in _NONE):
        return None
    try:
        return type(default)(value) if default is not None else int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"model_args {name}={value!r}: expected a {type(default or 0).__name__}") from None


def _cut_at_stop(text: str, until: list[str]) -> tuple[str, bool]:
    """text up to (excluding) the earliest of the `until` strings; and whether one was found."""
    cuts = [text.find(s) for s in until if s]
    cuts = [c for c in cuts if c >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


@register_model("d3llm")
class D3LLMEvalModel(LM):
    """lm-eval model: a DiffusionLM (a checkpoint dir, or `lm` + `tokenizer` objects) decoded with our decoders.

    model_args: pretrained (a checkpoint dir; or a model preset .yaml), preset (a conf/model preset name or .yaml:
    path, family, dtype and decode_defaults come from it; model_args win), family (default: detected from
    config.json; `lm=` objects without it count as tiny), dtype, device, decode (a conf/decode preset: vanilla |
    threshold | d3llm; with a preset, each lm-eval task decodes with the preset's decode_table row for it, method.md
    §6, as stage=eval does), any DecodeSpec knob by name (threshold, block_size, gen_length, kv_cache, ...),
    spec (from Python: a whole DecodeSpec, used for every request as is; the eval stage passes its decode
    section this way), batch_size, prompt_length (pad prompts on the right with PAD to this fixed length, the arith layout; default
    for family tiny: 24; unset for other families, or 0: prompts are left-padded per batch with an attention
    mask), threads, stats_path (write the per-request records as JSONL there after every generate_until call),
    name (this model's curve label in stage=report; default: the preset's name, else the checkpoint dir's name).
    """

    def __init__(self, pretrained: str | None = None, family: str | None = None, dtype: str | None = None,
                 device: str = "auto", decode: str = "threshold", batch_size: int | str = 16,
                 prompt_length: int | None = None, threads: int | None = None, stats_path: str | None = None,
                 attn_implementation: str | None = None, backend: str | None = None, preset: str | None = None,
                 name: str | None = None,
                 lm: Any = None, tokenizer: Any = None, spec: DecodeSpec | None = None, **knobs: Any) -> None:
        super().__init__()
        if preset is None and pretrained is not None and str(pretrained).endswith((".yaml", ".yml")):
            preset, pretrained = pretrained, None  # pretrained=<a model preset YAML>
        # a model preset (conf/model) fills what model_args leave out, and its decode_defaults feed the decode preset
        settings = model_section(str(preset)) if preset is not None else {}
        pretrained = pretrained if pretrained is not None else settings.get("path")
        family = family or settings.get("family")
        dtype = dtype or settings.get("dtype", "float32")
        attn_implementation = attn_implementation or settings.get("attn_implementation", "sdpa")
        backend = backend or settings.get("backend", "native")
        unknown = sorted(set(knobs) - set(SPEC_FIELDS))
        if unknown:
            raise ConfigError(f"unknown model_args {', '.join(unknown)}; decode knobs are: {', '.join(SPEC_FIELDS)}")
        if threads is not None:
            torch.set_num_threads(int(threads))
        if lm is None:
            lm, tokenizer, family = self._load(pretrained, family, dtype, device, attn_implementation, backend)
        if tokenizer is None:
            raise ConfigError(f"{pretrained} holds no tokenizer, which lm-eval needs to encode its prompts")
        self.lm, self.tokenizer, self.family = lm, tokenizer, family or EMBEDDED_FAMILY
        self.pretrained = str(pretrained) if pretrained is not None else type(lm).__name__
        self._device = next(lm.parameters()).device
        self.decode_name = str(decode)
        # the curve label of this model in stage=report (get_model_info): the preset's name, else the dir's
        self.name = name or (Path(str(preset)).stem if preset is not None else Path(self.pretrained).name)
        self.task_specs: dict[str, DecodeSpec] = {}  # lm-eval task -> the spec its requests decoded with
        self.settings, self.preset = settings, (str(preset) if preset is not None else None)
        # preset (the task's decode_table row, else the model's decode_defaults), then the user's knobs: resolved and
        # validated as the pipeline's decode section is (config/decode_presets.py)
        self.user_knobs = {k: _coerce(k, v) for k, v in knobs.items()}
        self.fixed_spec = spec is not None
        # a resolved spec (gen_length included) replaces the preset and the knobs
        self.knobs = dataclasses.asdict(spec) if spec is not None else self._resolve(None)
        self.batch_size = int(str(batch_size).split(":")[0]) if str(batch_size) != "auto" else 16
        if prompt_length is None and self.family == EMBEDDED_FAMILY:
            prompt_length = 24  # the embedded teacher learned absolute positions with prompts padded to 24
        # 0 = left-pad per batch with an attention mask (the real-model layout) even for the tiny family
        self.prompt_length = int(prompt_length) if prompt_length else None
        self._task_knobs: dict[str, dict[str, Any]] = {}  # decode_table row -> its knobs, resolved once
        self.spec_for(1)  # fail now, not after the dataset is built, on a bad knob (one block when gen_length unset)
        self.stats_path = stats_path
        self.stats: list[dict[str, Any]] = []
        self._compiled_once = False  # decode.compile: the first compiled decode ran (untimed)
        self._chat = False  # set once lm-eval asks for the chat template: the template then carries the BOS

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None):
        """lm-eval's CLI adds batch_size (default 1), max_batch_size and device (default cuda:0): model_args win
        over them, and the CLI's default cuda:0 on a machine without CUDA becomes device=auto (the CPU)."""
        extra = {k: v for k, v in (additional_config or {}).items()
                 if v is not None and k in ("batch_size", "device") and k not in arg_dict}
        if extra.get("device") == "cuda:0" and not torch.cuda.is_available():
            extra["device"] = "auto"
        return cls(**arg_dict, **extra)

    @staticmethod
    def _load(pretrained, family, dtype, device, attn_implementation, backend):
        from d3llm_pipeline.models.families import family_of, load_model
        from d3llm_pipeline.runtime import resolve_device

        if pretrained is None:
            raise ConfigError("model_args needs pretrained=<checkpoint dir> or preset=<conf/model name> "
                              "(from Python: or lm= and tokenizer= objects)")
        if family is None:
            detected = family_of(pretrained)
            if detected is None:
                raise ConfigError(f"cannot tell the family of {pretrained} from its config.json; pass family=")
            family = detected.name
        lm, tok = load_model(pretrained, family, dtype=dtype, device=resolve_device(str(device)),
                             attn_implementation=attn_implementation, backend=backend, key="pretrained")
        lm.eval()
        return lm, tok, family

    # --- the decode spec ------------------------------------------------------------------------------------

    def _resolve(self, task: str | None) -> dict[str, Any]:
        """The decode knobs of preset `decode` for the model preset and pipeline task `task`, the user's winning
        (config/decode_presets.py resolve_decode: the resolution stage=eval's composed config makes). gen_length
        is left out unless the user set it: it comes from each request's max_gen_toks."""
        decode = resolve_decode(self.decode_name, self.preset, task, overrides=self.user_knobs)
        return {k: getattr(decode, k) for k in SPEC_FIELDS if k != "gen_length" or k in self.user_knobs}

    def knobs_for(self, lmeval_task: str | None) -> dict[str, Any]:
        """The decode knobs of an lm-eval task: the model preset's decode_table row of the pipeline task that runs
        it (method.md §6: HumanEval decodes one block at a time, MBPP at τ 0.4, ...), else its decode_defaults;
        the user's knobs win. A spec passed from Python is used for every task as is."""
        row = None if self.fixed_spec else pipeline_task_of(lmeval_task)
        if row is None or row not in (self.settings.get("decode_table") or {}):
            return self.knobs
        if row not in self._task_knobs:
            self._task_knobs[row] = self._resolve(row)
            log.info("lm-eval task %s: decode=%s with the %s row of the model's decode table: %s", lmeval_task,
                     self.decode_name, row, json.dumps(self._task_knobs[row]))
        return self._task_knobs[row]

    def spec_for(self, max_gen_toks: int, lmeval_task: str | None = None) -> DecodeSpec:
        """The DecodeSpec for a request of `lmeval_task`: its knobs (knobs_for), gen_length = the knob, else
        max_gen_toks rounded up to whole blocks."""
        knobs = dict(self.knobs_for(lmeval_task))
        block = int(knobs.get("block_size", SPEC_FIELDS["block_size"].default))
        if knobs.get("gen_length") is None:
            knobs["gen_length"] = -(-int(max_gen_toks) // block) * block
        return DecodeSpec(**knobs)  # the decode section's own checks (block divides gen_length, ...)

    # --- prompts ---------------------------------------------------------------------------------------------

    def _encode(self, contexts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt_ids (B, P), attention mask or None) laid out the way our decoders expect."""
        ids = [self.tokenizer(c, add_special_tokens=not self._chat)["input_ids"] for c in contexts]
        pad = self.lm.pad_token_id
        if self.prompt_length is not None:  # fixed positions, PAD on the right, no mask (arith.encode's layout)
            too_long = [len(i) for i in ids if len(i) > self.prompt_length]
            if too_long:
                raise ConfigError(f"a {max(too_long)}-token prompt exceeds prompt_length={self.prompt_length}")
            rows = [i + [pad] * (self.prompt_length - len(i)) for i in ids]
            return torch.tensor(rows, dtype=torch.long), None
        width = max(len(i) for i in ids)  # left-pad so every generation region starts at the same column
        rows = [[pad] * (width - len(i)) + i for i in ids]
        mask = [[0] * (width - len(i)) + [1] * len(i) for i in ids]
        return torch.tensor(rows, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def _text_and_tokens(self, gen: list[int], until: list[str]) -> tuple[str, int]:
        """The output text (cut at the first EOS, then at the first stop string) and its generated-token count."""
        eos = self.lm.eos_token_id
        n = gen.index(eos) if eos in gen else len(gen)
        # MASK / PAD stay visible as text, so an unfinished generation grades as wrong (like arith.decode_response)
        text = self.tokenizer.decode(gen[:n], skip_special_tokens=False)
        cut, stopped = _cut_at_stop(text, until)
        if stopped:  # the most tokens whose text still fits before the stop string (prefix texts grow with k)
            lo, hi = 0, n
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if len(self.tokenizer.decode(gen[:mid], skip_special_tokens=False)) <= len(cut):
                    lo = mid
                else:
                    hi = mid - 1
            n = lo
        return cut, n

    # --- the LM API ------------------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decode the requests in batches of `batch_size` (same max_gen_toks); returns the cut output texts."""
        from tqdm.auto import tqdm

        outputs: list[str | None] = [None] * len(requests)
        groups: dict[tuple[str | None, int], list[int]] = {}  # (task, max_gen_toks) -> indices, in request order
        for i, req in enumerate(requests):
            key = (getattr(req, "task_name", None), int(req.args[1].get("max_gen_toks", 256)))
            groups.setdefault(key, []).append(i)
        bar = tqdm(total=len(requests), desc="d3llm generate", disable=disable_tqdm or self.rank != 0)
        for (task, max_gen_toks), idx in groups.items():
            spec = self.task_specs[str(task)] = self.spec_for(max_gen_toks, task)
            for lo in range(0, len(idx), self.batch_size):
                batch = idx[lo: lo + self.batch_size]
                for i, text in zip(batch, self._decode_batch([requests[i] for i in batch], spec), strict=True):
                    outputs[i] = text
                bar.update(len(batch))
        bar.close()
        if requests:
            log.info("d3llm lm-eval decoding: %s", json.dumps(self.summary()))
        if self.stats_path:
            Path(self.stats_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.stats_path).write_text("".join(json.dumps(s) + "\n" for s in self.stats))
        return outputs

    @torch.no_grad()
    def _decode_batch(self, requests, spec: DecodeSpec) -> list[str]:
        contexts = [r.args[0] for r in requests]
        prompt_ids, attn = self._encode(contexts)
        prompt_ids, attn = prompt_ids.to(self._device), attn.to(self._device) if attn is not None else None
        if spec.compile and not self._compiled_once:  # the first compiled decode compiles: untimed, as in stage=eval
            self._compiled_once = True
            log.info("decode.compile: warm-up decode (compiling) took %.1f s, not counted in wall_s",
                     compile_warmup(self.lm, prompt_ids, spec, attn))
        start = time.perf_counter()
        # sampling noise keyed by each prompt's text (crc32): the same draws however lm-eval orders and batches it
        keys = torch.tensor([zlib.crc32(c.encode("utf-8")) for c in contexts], dtype=torch.long)
        result = decode(self.lm, prompt_ids, spec, attn, sample_keys=keys)
        gen = result.sequences[:, prompt_ids.shape[1]:].cpu().tolist()
        nfe = result.nfe.cpu().tolist()
        wall = time.perf_counter() - start
        texts = []
        for req, row, forwards in zip(requests, gen, nfe, strict=True):
            kwargs = req.args[1]
            until = kwargs.get("until") or []
            text, tokens = self._text_and_tokens(row, [until] if isinstance(until, str) else list(until))
            texts.append(text)
            self.stats.append({"task": req.task_name, "doc_id": req.doc_id, "prompt": req.args[0], "output": text,
                               "nfe": int(forwards), "tokens": int(tokens), "gen_length": spec.gen_length,
                               "batch_wall_s": round(wall, 4), "wall_s": round(wall / len(requests), 4)})
        return texts

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval writes into its results file's `config` (we add `d3llm`): the curve label, the decoder and
        each task's spec, and the NFE / tokens / TPF summary, so stage=report can place every task as an AUP point
        (reporting/lmeval_results.py)."""
        return {"d3llm": {"model": self.name, "family": self.family, "decode": self.decode_name,
                          "specs": {t: dataclasses.asdict(s) for t, s in self.task_specs.items()},
                          "summary": self.summary()}}

    def summary(self, task: str | None = None) -> dict[str, Any]:
        """Totals over the recorded requests (those of `task` only, when given): TPF = Σ tokens / Σ NFE."""
        rows = [s for s in self.stats if task is None or s["task"] == task]
        out: dict[str, Any] = {"n": len(rows), "total_nfe": sum(r["nfe"] for r in rows),
                               "total_tokens": sum(r["tokens"] for r in rows),
                               "wall_s": round(sum(r["wall_s"] for r in rows), 4)}
        out["tpf"] = tokens_per_forward([r["tokens"] for r in rows], [r["nfe"] for r in rows]) if rows else None
        out["mean_nfe"] = out["total_nfe"] / len(rows) if rows else None
        if task is None:
            out["by_task"] = {t: self.summary(t) for t in sorted({str(s["task"]) for s in self.stats})}
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._generative_only(requests, "loglikelihood")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        self._generative_only(requests, "loglikelihood_rolling")

    @staticmethod
    def _generative_only(requests, kind: str):
        tasks = sorted({str(getattr(r, "task_name", None)) for r in requests}) or ["?"]
        raise NotImplementedError(
            f"the d3llm model only generates (generate_until); task {', '.join(tasks)} asks for {kind} requests. "
            "d3LLM's benchmarks are all generative: use a generative variant of the task")

    # --- chat templates --------------------------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if chat_template is False or chat_template is None:
            return None
        return chat_template if isinstance(chat_template, str) else getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"{self.pretrained}'s tokenizer has no chat template; drop --apply_chat_template")
        self._chat = True  # the rendered template holds the special tokens: do not add them again on encode
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
