"""Count device -> host synchronisations of a block of torch code (decoders promise at most one per forward).

A host sync is any point where Python has to wait for the accelerator: reading a value (`.item()`, `bool(t)`,
`int(t)`, `.tolist()`, `.cpu()`), an op whose output *shape* depends on tensor data (`nonzero`, `t[bool_mask]`,
`t[bool_mask] = v`, `masked_select`, `repeat_interleave` without `output_size`, `unique`), and a blocking copy
between host and device (`torch.tensor(list, device=cuda)` waits for the stream: PyTorch's non-blocking=False
copies end in a stream synchronize). `SyncCounter` sees them through a `TorchDispatchMode`:

    from d3llm_pipeline.decoding.sync_counter import SyncCounter
    with SyncCounter(device="cuda") as syncs:
        result = decode(lm, prompts, spec)
    print(syncs.total, syncs.by_kind)      # e.g. 31 {'read': 31}; syncs.events lists (kind, op)

On a CPU nothing actually waits, but the same ops are what would stall a GPU, so `device="cpu"` counts them as
if the tensors lived on an accelerator: every data read and data-dependent shape, and every tensor made from
host data (`aten.lift_fresh`, what `torch.tensor(list)` dispatches; an upload on an accelerator; empty ones copy
nothing and are not counted). `tolist`,
`cpu` and `numpy` dispatch nothing for a CPU tensor, so they are counted by wrapping those methods while the
counter is active. On CUDA, copies are counted from the ops themselves (device -> host always; host -> device
unless non_blocking). Kinds: read (a value reaches Python), shape (data-dependent output size), copy (a blocking
transfer), upload (a tensor built from host data).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops whose output size is only known after reading device data (a sync on CUDA).
_SHAPE_OPS = {
    aten.nonzero.default,
    aten.masked_select.default,
    aten.repeat_interleave.Tensor,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
}
_BOOL_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_COPY_OPS = {aten._to_copy.default, aten.copy_.default}
_HOST_METHODS = ("tolist", "cpu", "numpy")


def _has_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class SyncCounter(TorchDispatchMode):
    """Counts host syncs (see the module docstring) of the code run inside `with SyncCounter(device) as c:`.

    device: the device type the counted tensors live on ("cpu" counts what would sync on an accelerator).
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.device_type = torch.device(device).type
        self.events: list[tuple[str, str]] = []
        self._inside_host_method = 0
        self._saved: dict[str, object] = {}

    @property
    def total(self) -> int:
        return len(self.events)

    @property
    def by_kind(self) -> dict[str, int]:
        return dict(Counter(kind for kind, _ in self.events))

    def _note(self, kind: str, what: str) -> None:
        if not self._inside_host_method:
            self.events.append((kind, what))

    def _classify(self, func, args, kwargs) -> str | None:
        if func is aten._local_scalar_dense.default:
            return "read"
        if func in _SHAPE_OPS:
            return "shape"
        if func in _BOOL_INDEX_OPS and _has_bool_index(args[1] if len(args) > 1 else kwargs.get("indices")):
            return "shape"
        if func is aten.repeat_interleave.self_Tensor and kwargs.get("output_size") is None and (
                len(args) < 4 or args[3] is None):
            return "shape"
        if func in _COPY_OPS and self.device_type != "cpu":
            return self._copy_kind(func, args, kwargs)
        if func is aten.lift_fresh.default and self.device_type == "cpu" and args[0].numel() > 0:
            return "upload"
        return None

    @staticmethod
    def _copy_kind(func, args, kwargs) -> str | None:
        if func is aten.copy_.default:
            dst, src = args[0], args[1]
            non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
            src_dev, dst_dev = src.device.type, dst.device.type
        else:
            src = args[0]
            dst_dev = torch.device(kwargs["device"]).type if kwargs.get("device") is not None else src.device.type
            src_dev, non_blocking = src.device.type, kwargs.get("non_blocking", False)
        if src_dev != "cpu" and dst_dev == "cpu":
            return "copy"  # device -> host: always waits for the data
        if src_dev == "cpu" and dst_dev != "cpu" and not non_blocking and src.numel() > 0:
            return "copy"  # blocking upload: memcpy then stream synchronize
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = self._classify(func, args, kwargs)
        if kind is not None:
            self._note(kind, str(func))
        return func(*args, **kwargs)

    def _wrap(self, name: str):
        original = getattr(torch.Tensor, name)
        counter = self

        def method(tensor, *args, **kwargs):
            if tensor.device.type == counter.device_type:
                counter._note("read", f"Tensor.{name}")
            counter._inside_host_method += 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                counter._inside_host_method -= 1

        return original, method

    def __enter__(self):
        for name in _HOST_METHODS:
            original, method = self._wrap(name)
            self._saved[name] = original
            setattr(torch.Tensor, name, method)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, original in self._saved.items():
                setattr(torch.Tensor, name, original)
            self._saved.clear()
