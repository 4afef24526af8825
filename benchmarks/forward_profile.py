"""Where a transformer forward's time goes: matmuls, attention, fused elementwise kernels.

At 1328x1328 and 1024x1024 a forward is compute-bound. The largest matmuls already
run at the card's bf16 peak, so the gap to the compute floor must be in attention
or the work between matmuls; this splits one forward's GPU time by kind of kernel and sets
each beside its arithmetic (analytic FLOPs of Qwen-Image's joint blocks), so a run says
which kind to attack. On the CPU (--tiny) the same split is made of the operators' own time.
`attention_backends` times the joint attention alone with each SDPA kernel PyTorch offers,
with FlexAttention and with FlashAttention-3 (where its wheel is installed), so a run also
says whether another kernel would be faster at that shape.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from functools import cache, partial
from typing import Any

import torch
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
from torch.autograd import DeviceType
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import flex_attention
from torch.profiler import ProfilerActivity, profile

from qwen_image_worker.engine.joint_attention import attention_over_used_keys, flash3_unavailable

# Kernel and operator names, lower-cased, by kind; the first pattern that matches wins.
# Inductor names a fused kernel after the operators around it (a copy before attention may
# be "triton_poi_fused__scaled_dot_product_..."), so its prefixes come before attention's;
# cuDNN's attention kernels name their architecture as the matmuls do, so attention comes
# before matmul.
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("matmul", ("triton_tem", "triton_mm")),
    ("fused", ("triton_",)),
    ("attention", ("attention", "attn", "fmha", "flash", "sdpa")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "aten::mm", "addmm", "bmm")),
)
TOP_KERNELS = 8
# SDPA kernels to time the joint attention with; one this build or device lacks is skipped.
BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, patterns in KINDS:
        if any(pattern in lowered for pattern in patterns):
            return kind
    return "other"


def forward_flops(config: Any, batch: int, image_tokens: int, text_tokens: int) -> dict[str, float]:
    """FLOPs of the blocks' matmuls and joint attention for one forward (multiply-add = 2).

    Per block and token of either stream: Q, K, V and the output projection (4 d^2) and the
    MLP (2 d f, f = 4 d); attention over the joint sequence: Q K^T and P V, 2 n^2 d each.
    The modulation, the input and output layers are left out (under 0.1 %)."""
    width = config.num_attention_heads * config.attention_head_dim
    tokens = image_tokens + text_tokens
    per_token = 2 * (4 * width * width + 2 * width * 4 * width)
    layers = config.num_layers
    return {
        "matmul": float(batch * layers * tokens * per_token),
        "attention": float(batch * layers * 4 * tokens * tokens * width),
    }


def profile_forward(
    forward: Callable[[], Any], flops: dict[str, float], device: torch.device, runs: int
) -> dict[str, Any]:
    """Profile `runs` calls of `forward` (warmed up by the caller) and split their time."""
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(runs):
            forward()
        if on_cuda:
            torch.cuda.synchronize(device)
    kernels: dict[str, float] = {}
    for event in prof.key_averages():
        if on_cuda:
            seconds = (
                event.self_device_time_total / 1e6 if event.device_type == DeviceType.CUDA else 0
            )
        else:
            seconds = event.self_cpu_time_total / 1e6
        if seconds > 0:
            kernels[event.key] = kernels.get(event.key, 0.0) + seconds / runs
    by_kind: dict[str, float] = {}
    for name, seconds in kernels.items():
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + seconds
    total = sum(by_kind.values())
    result: dict[str, Any] = {
        "runs": runs,
        "timed_on": "gpu kernels" if on_cuda else "cpu operators",
        "total_s": round(total, 6),
        "kinds": {
            kind: {"s": round(seconds, 6), "share": round(seconds / total, 4) if total else 0.0}
            for kind, seconds in sorted(by_kind.items(), key=lambda item: -item[1])
        },
        "flops": {kind: f"{value:.4g}" for kind, value in flops.items()},
        "top": [
            {"name": name[:120], "kind": kind_of(name), "s": round(seconds, 6)}
            for name, seconds in sorted(kernels.items(), key=lambda item: -item[1])[:TOP_KERNELS]
        ],
    }
    for kind, value in flops.items():
        seconds = by_kind.get(kind, 0.0)
        result["kinds"].setdefault(kind, {"s": 0.0, "share": 0.0})
        result["kinds"][kind]["tflops"] = (
            float(f"{value / seconds / 1e12:.4g}") if seconds else None
        )
    return result


def attention_backends(
    config: Any, tokens: int, device: torch.device, dtype: torch.dtype, runs: int
) -> dict[str, Any]:
    """One block's joint attention (batch 1, no mask) timed alone with each SDPA kernel,
    with FlexAttention (a Triton kernel inductor generates, compiled here for this shape)
    and with FA3 (ATTENTION_BACKEND=flash3): seconds per call and TFLOP/s, or why the kernel
    could not run. FA3 takes Q, K and V in the (batch, tokens, heads, head_dim) layout
    they are built in, SDPA the (batch, heads, tokens, head_dim) view of them."""
    q, k, v = _qkv(config, 1, tokens, device, dtype)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    kernels: dict[str, tuple[Callable[[], Any], Callable[..., Any]]] = {
        name: (partial(sdpa_kernel, [backend]), sdpa) for name, backend in BACKENDS.items()
    }
    kernels["flex"] = (contextlib.nullcontext, _compiled_flex())
    reason = flash3_unavailable(device, config.attention_head_dim)
    kernels["flash3"] = (contextlib.nullcontext, partial(_unless, reason, _flash3))
    flops = 4.0 * tokens * tokens * config.num_attention_heads * config.attention_head_dim
    return {
        name: _timed(context, partial(attention, q, k, v), flops, device, runs)
        for name, (context, attention) in kernels.items()
    }


def masked_attention(
    config: Any,
    text: int,
    image: int,
    padding: int,
    device: torch.device,
    dtype: torch.dtype,
    runs: int,
) -> dict[str, Any]:
    """One block's joint attention as true CFG's joined forward runs it (batch 2, the second
    text `padding` tokens shorter): through SDPA with the padding masked, with each kernel
    and with the order the worker falls back to without FA3 (cuDNN first, the others
    behind it), and through FA3 over each element's used keys, as the worker runs it."""
    tokens = text + image
    q, k, v = _qkv(config, 2, tokens, device, dtype)
    mask = torch.ones(2, 1, 1, tokens, dtype=torch.bool, device=device)
    mask[1, ..., text - padding : text] = False
    flops = 4.0 * 2 * tokens * tokens * config.num_attention_heads * config.attention_head_dim
    sdpa = partial(torch.nn.functional.scaled_dot_product_attention, q, k, v, attn_mask=mask)
    contexts = {name: partial(sdpa_kernel, [backend]) for name, backend in BACKENDS.items()}
    contexts["cudnn_first"] = partial(sdpa_kernel, list(BACKENDS.values()), set_priority=True)
    results = {
        name: _timed(context, sdpa, flops, device, runs) for name, context in contexts.items()
    }
    # Image first: the shorter text's padding is then its last keys, which FA3 leaves out.
    used = torch.tensor([tokens, tokens - padding], dtype=torch.int32, device=device)
    bshd = [t.transpose(1, 2) for t in (q, k, v)]
    reason = flash3_unavailable(device, config.attention_head_dim)
    results["flash3"] = _timed(
        contextlib.nullcontext,
        partial(_unless, reason, attention_over_used_keys, *bshd, used),
        flops,
        device,
        runs,
    )
    return results


def _unless(reason: str | None, attention: Callable[..., Any], *args: torch.Tensor) -> Any:
    """`attention(*args)`, or where FA3 cannot run here (`flash3_unavailable`), why not."""
    if reason is not None:
        raise RuntimeError(reason)
    return attention(*args)


def _qkv(
    config: Any, batch: int, tokens: int, device: torch.device, dtype: torch.dtype
) -> list[torch.Tensor]:
    """Random Q, K and V laid out as diffusers hands them to SDPA: (batch, tokens, heads,
    head_dim) seen as (batch, heads, tokens, head_dim), a strided view."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    shape = (batch, tokens, config.num_attention_heads, config.attention_head_dim)
    return [
        torch.randn(shape, generator=generator).to(device, dtype).permute(0, 2, 1, 3)
        for _ in range(3)
    ]


def _timed(
    context: Callable[[], Any],
    attention: Callable[[], Any],
    flops: float,
    device: torch.device,
    runs: int,
) -> dict[str, Any]:
    """Seconds per call and TFLOP/s of `attention` under `context`, or why it cannot run."""
    try:
        with context(), torch.inference_mode():
            attention()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            for _ in range(runs):
                attention()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    except Exception as exc:  # a kernel this build, device or shape lacks
        return {"error": str(exc).splitlines()[0][:160]}
    seconds = (time.perf_counter() - started) / runs
    return {"s": round(seconds, 6), "tflops": float(f"{flops / seconds / 1e12:.4g}")}


def _flash3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return dispatch_attention_fn(q, k, v, backend=AttentionBackendName._FLASH_3)


@cache
def _compiled_flex() -> Callable[..., Any]:
    return torch.compile(flex_attention, dynamic=False)
