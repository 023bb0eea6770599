"""The model adapter: everything the pure algorithms need to know about a diffusion LM.

Decoding, masking and losses only ever talk to a `DiffusionLM`: token ids of MASK / EOS / PAD and a
`logits(input_ids, attention_mask, keep)` call whose output is *aligned*, i.e. `logits[:, i]` predicts token
`i`. Family specifics stay here: Dream-style models predict token i from output i-1, so their logits are
shifted right by one (position 0 reuses its own output); LLaDA-style models and the tiny teacher need no shift.

Decoders ask only for the logits they use (`keep`, a (B, L) bool mask of positions): the output projection onto
a 32k-150k vocabulary is the costliest part of a forward for a small model, and most positions of a diffusion
step (the prompt, decoded tokens, future blocks) need none. `forward_kv` runs a suffix of the sequence on top
of cached keys/values of its prefix (the d3LLM prefix KV cache, decoding/prefix_cache.py).

    from d3llm_pipeline.models.adapter import HFDiffusionAdapter
    lm = HFDiffusionAdapter(hf_model, mask_token_id=1, eos_token_id=2, pad_token_id=0)
    logits = lm.logits(ids)                   # (B, L, V)
    flat = lm.logits(ids, keep=keep)          # (keep.sum(), V), row-major order of the True entries
    flat, kv = lm.forward_kv(ids, start=40, past=prefix_kv, keep=keep)   # kv: per layer (K, V) of [40, L)
"""

from __future__ import annotations

import inspect

import torch

from d3llm_pipeline.decoding.lm import KV, DiffusionLM  # noqa: F401  (re-exported: the protocol this implements)
from d3llm_pipeline.decoding.spec import DecodeDefaults


def align_logits(raw: torch.Tensor, shift: bool) -> torch.Tensor:
    """Return logits where position i predicts token i.

    Dream-style (shift=True) models emit the prediction for token i at output i-1: move every row right by one
    and let position 0 reuse its own output (it is always part of the prompt, so its value never matters).
    """
    if not shift:
        return raw
    return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)


class HFDiffusionAdapter(torch.nn.Module):
    """Wraps a Hugging Face model whose forward returns `.logits` (B, L, V) under full bidirectional attention."""

    def __init__(
        self,
        model: torch.nn.Module,
        mask_token_id: int,
        eos_token_id: int,
        pad_token_id: int,
        shift_logits: bool = False,
        eot_token_id: int | None = None,
        decode_defaults: DecodeDefaults | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.mask_token_id = int(mask_token_id)
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(pad_token_id)
        self.shift_logits = bool(shift_logits)
        self.eot_token_id = eot_token_id  # ends a chat turn (LLaDA <|eot_id|>, Dream <|im_end|>); None: no chat
        # the family's decoding behaviour (acceptance rule, official cache plan); the tiny family's by default
        self.decode_defaults = decode_defaults or DecodeDefaults()
        # transformers 5.24 renamed `past_key_values` to `cache`; remote-code models (LLaDA, Dream) keep the old name.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        # Remote-code forwards may not take logits_to_keep: then full logits are computed and sliced here.
        self._takes_keep = "logits_to_keep" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        # With `keep_count` the LM head's input rows are picked by a pre-hook (index_select of a known count)
        # instead of a boolean mask, which would need a host sync to size its output.
        self._head_rows: torch.Tensor | None = None
        try:
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        except (NotImplementedError, AttributeError):  # remote code may not say which module is its head
            head = None
        self._has_head_hook = isinstance(head, torch.nn.Linear)  # (an Embedding here would be the input's)
        if self._has_head_hook:
            head.register_forward_pre_hook(self._select_head_rows)
        # transformers' GPT-2 reads two input ids on the host every forward without an attention mask, only to
        # warn once about padding: a host sync per forward; the decoders' inputs are never ambiguous that way.
        for module in model.modules():
            if hasattr(module, "warn_if_padding_and_no_attention_mask"):
                module.warn_if_padding_and_no_attention_mask = _no_padding_warning
        # decode.compile: torch.compile(model) for forwards without autograd (decoding). A plain attribute, not a
        # submodule, so parameters and state_dict keys are unchanged; training (grad enabled) stays eager.
        self._compiled = None

    def compile_forward(self) -> None:
        """Send every no-grad forward through torch.compile(model, dynamic=True) from now on (decode.compile):
        compiled at the first forward (seconds to minutes), recompiled when a new shape pattern appears."""
        if self._compiled is None:
            object.__setattr__(self, "_compiled", torch.compile(self.model, dynamic=True))

    def _run(self, **kwargs):
        compiled = self._compiled is not None and not torch.is_grad_enabled()
        return (self._compiled if compiled else self.model)(**kwargs)

    def _select_head_rows(self, module, args):
        """Forward pre-hook of the LM head: only the rows `forward_kv` asked for, as (n, H)."""
        if self._head_rows is None:
            return None
        hidden = args[0]
        return (hidden.reshape(-1, hidden.shape[-1]).index_select(0, self._head_rows), *args[1:])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, keep: torch.Tensor | None = None,
        keep_count: int | None = None,
    ) -> torch.Tensor:
        """Aligned logits (B, L, V), or only the `keep` (B, L) positions as (keep.sum(), V).

        keep_count: keep.sum() if the caller knows it (no host sync then; see `forward_kv`)."""
        if keep is None:
            out = self._run(input_ids=input_ids, attention_mask=attention_mask)
            return align_logits(out.logits, self.shift_logits)
        return self.forward_kv(input_ids, 0, None, attention_mask, keep, return_kv=False, keep_count=keep_count)[0]

    def forward_kv(
        self,
        input_ids: torch.Tensor,
        start: int,
        past: KV | None,
        attention_mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        return_kv: bool = True,
        own_first: bool = False,
        keep_count: int | None = None,
    ) -> tuple[torch.Tensor, KV | None]:
        """Forward positions [start, L) of input_ids (B, L) on top of `past`, the K/V of positions [0, start).

        Returns the aligned logits of the `keep` (B, L) positions, flattened to (n, V) in row-major order (all
        of [start, L) as (B, L - start, V) when keep is None; keep must be False before `start`), and the
        per-layer K/V of positions [start, L). attention_mask, if given, covers all L positions.

        Two departures exist only to reproduce the official cached decoders (decode.cache_plan=reference):
        `past` may hold more entries than `start` (Dream's reference keeps a rebuilt cache longer than its
        tracked length; the suffix then still gets RoPE positions from `start`), and `own_first` makes a shifted
        model's first forwarded position take its own output, as the official code's shift of the suffix's
        logits does, instead of re-running position start-1.

        keep_count: the number of True entries of keep[:, start:], if the caller knows it. The LM head then gets
        exactly those rows by index (same rows, same order, same values as the mask would give) and the call
        makes no host sync; without it the boolean mask is applied, which must read the mask on the host.
        """
        assert (start == 0) == (past is None), "past must hold exactly the positions before start"
        run_from = start
        if self.shift_logits and start > 0 and not own_first:
            # The prediction for token `start` is the output at start-1, which the cache does not hold:
            # re-run that one (final, cached) position on top of the cache shortened by one.
            run_from = start - 1
            past = [(k[:, :, :run_from], v[:, :, :run_from]) for k, v in past]
        kwargs = {"input_ids": input_ids[:, run_from:], "attention_mask": attention_mask}
        past_len = past[0][0].shape[2] if past else 0
        if past_len != run_from:  # a cache with extra entries: RoPE positions still count from run_from
            positions = torch.arange(run_from, input_ids.shape[1], device=input_ids.device)
            kwargs["position_ids"] = positions[None].expand(input_ids.shape[0], -1)
        twice = None  # own_first: rows whose raw output `start` serves aligned positions start and start+1
        by_index = keep is not None and keep_count is not None and self._has_head_hook
        if by_index:
            head_rows = self._head_rows = self._head_row_index(keep, keep_count, start, run_from, own_first)
        elif keep is not None:
            raw_keep = keep[:, run_from:]
            if self.shift_logits:  # aligned position i is raw output i-1 (position 0 is prompt, never kept)
                raw_keep = torch.cat([raw_keep[:, 1:], torch.zeros_like(raw_keep[:, :1])], dim=1)
                if own_first and start > 0:
                    twice = keep[:, start] & raw_keep[:, 0]  # (B,)
                    raw_keep[:, 0] |= keep[:, start]
            if self._takes_keep:
                kwargs["logits_to_keep"] = raw_keep
        if return_kv or past is not None:
            from transformers import DynamicCache

            kwargs[self._cache_kwarg] = DynamicCache(ddp_cache_data=past) if past is not None else None
            kwargs["use_cache"] = True
        try:
            out = self._run(**kwargs)
        finally:
            self._head_rows = None
        logits = out.logits
        if by_index and logits.dim() == 3:  # the head ran without its module (e.g. a tied F.linear): select here
            logits = logits.reshape(-1, logits.shape[-1]).index_select(0, head_rows)
        elif by_index:
            pass  # already (keep_count, V) in aligned row-major order
        elif keep is not None and logits.dim() == 3:  # the model ignored logits_to_keep: (B, L - run_from, V)
            logits = logits[raw_keep]
        if twice is not None and bool(twice.any()):  # (one host sync, reference plan only) duplicate those rows
            repeats = torch.ones_like(raw_keep, dtype=torch.long)
            repeats[:, 0] += twice.long()
            logits = logits.repeat_interleave(repeats[raw_keep], dim=0)
        if keep is None:
            logits = align_logits(logits, self.shift_logits)[:, start - run_from :]
        kv = None
        if return_kv:
            cache = getattr(out, "cache", None) or out.past_key_values
            new_from = past_len + start - run_from  # the cache holds past, then [run_from, L)
            kv = [(layer.keys[:, :, new_from:], layer.values[:, :, new_from:]) for layer in cache.layers]
        return logits, kv

    def _head_row_index(self, keep: torch.Tensor, count: int, start: int, run_from: int, own_first: bool
                        ) -> torch.Tensor:
        """(count,) indices into the flattened (B * (L - run_from), H) LM-head input for the kept aligned
        positions of keep[:, start:], in row-major order. Aligned position i is raw output i (no shift), i-1
        (shifted), and for a shifted cached forward with own_first its first position is its own output."""
        width = keep.shape[1] - start
        flat = keep[:, start:].reshape(-1).nonzero_static(size=count).squeeze(1)  # (n,)
        row, col = flat // width, flat % width  # col: aligned position - start
        if self.shift_logits and (start == 0 or own_first):
            col = (col - 1).clamp(min=0)  # raw output i-1, relative to run_from (== start here)
        return row * (keep.shape[1] - run_from) + col


def _no_padding_warning(*args, **kwargs) -> None:
    """Stands in for transformers' per-forward padding check (a host read of the input ids, for a warning)."""
