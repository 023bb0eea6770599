"""model.backend=remote: a checkpoint's own modeling code (trust_remote_code=True), for what we cannot load natively.

Only the adapter contract is assumed (a forward returning `.logits`); the family still supplies the special ids
and the logit alignment. KV caching (decode.kv_cache) and logits_to_keep depend on that code and may be missing:
the adapter then slices full logits itself.

    lm, tok = load_remote(get_family("llada"), Path(dir), "bfloat16", "cuda")
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from d3llm_pipeline.models.adapter import HFDiffusionAdapter
from d3llm_pipeline.models.families.base import Family, torch_dtype

log = logging.getLogger(__name__)


def load_remote(family: Family, path: Path, dtype: str, device: Any) -> tuple[HFDiffusionAdapter, Any]:
    from transformers import AutoModel

    from d3llm_pipeline.models.families.native import load_tokenizer

    log.warning("model.backend=remote: running the modeling code shipped in %s (trust_remote_code=True); KV caching "
                "(decode.kv_cache) and logits_to_keep may be unavailable there", path)
    model = AutoModel.from_pretrained(path, trust_remote_code=True, local_files_only=True, dtype=torch_dtype(dtype))
    model.to(device).eval()
    ids = family.special_ids(json.loads((path / "config.json").read_text()))
    lm = HFDiffusionAdapter(model, ids.mask, ids.eos, ids.pad, family.shift_logits, eot_token_id=ids.eot,
                            decode_defaults=family.decode_defaults)
    return lm, load_tokenizer(path)
