"""The GPU speed levers, applied to a loaded pipeline: stock diffusers' arithmetic, done faster.

Every lever computes the same function as the stock pipeline; only the order of bf16
rounding changes (see `lossless_tolerance`). Each one is chosen by WorkerSettings and can be
switched off. They act on CUDA only: on a CPU `accelerate` leaves the pipeline as it
is, unless a caller (tests, the benchmark's --tiny run) asks for the device-agnostic ones.
Two opt-in fast modes, off by default, trade exactness for speed: FP8 matmuls (fp8.py) and
the first-block step cache (step_cache.py); `accelerate` pulls them too.

The text mask needs no lever: the stock pipeline drops an all-ones mask, so one prompt, or a
batch of prompts of one length, reaches the transformer without one. A batch of prompts of
different lengths brings a mask (padding must not be attended to; DESIGN.md section 6: a
mask costs 10-25 % per forward). Its path used to break graph capture with one host-to-device
copy; `capture_safe_text_lengths` computes the same without it, so masked forwards are
captured too.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import QwenImagePipeline
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d
from diffusers.models.transformers import transformer_qwenimage
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from qwen_image_worker.engine.base import ONE_AT_A_TIME, PIXELS_PER_TOKEN, BatchLimit
from qwen_image_worker.engine.feed_forward import use_gelu_epilogues
from qwen_image_worker.engine.fp8 import Fp8Report, quantise_blocks
from qwen_image_worker.engine.joint_attention import install_joint_attention
from qwen_image_worker.engine.paired_cfg import PairedGuidance, forward_output
from qwen_image_worker.engine.step_cache import CachedBlocks, install_step_cache
from qwen_image_worker.settings import AttentionBackend, CompileMode, WorkerSettings

logger = logging.getLogger(__name__)

# When the levers count as lossless: the `relative_error` of the accelerated output against
# stock diffusers' (latents, and decoded pixels) is at most `lossless_tolerance(spread)`.
# bf16 keeps 8 significant bits (unit roundoff 2^-8, about 4e-3): reordering bf16 arithmetic
# (fused kernels, another attention kernel) moves one forward by about that much, and 50
# denoising steps carry it to about 1e-2, hence the floor of 3e-2. `spread` is how far stock
# diffusers moves from itself when only its attention kernel changes (another exact kernel,
# same weights and seed): random-weight models, the benchmark's and the demo, amplify rounding
# far more than trained ones (their VAE turns 0.3 % in latents into 2.5 % in pixels, measured
# on the CPU), so a lever may move the output 3x as far as that. Any real fault (a mask, a
# wrong CFG branch, a stale graph input, another seed) moves latents by O(1): two seeds' latents
# are about 1.4 apart.
LOSSLESS_REL_L2_TOLERANCE = 3e-2
SPREAD_FACTOR = 3.0


def lossless_tolerance(spread: float = 0.0) -> float:
    return max(LOSSLESS_REL_L2_TOLERANCE, SPREAD_FACTOR * spread)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference - mean(reference)||, in float64.

    Measured against the reference's spread, not its size: pixels sit around mid-grey, and a
    plain relative L2 would call two unrelated pictures close.
    """
    ref = reference.detach().to("cpu", torch.float64)
    diff = value.detach().to("cpu", torch.float64) - ref
    return float(diff.norm() / (ref - ref.mean()).norm().clamp_min(1e-30))


# Runs before a graph capture, on a side stream: they compile, plan the attention kernel and
# fill diffusers' per-shape RoPE caches, so the capture itself records kernels only.
_CAPTURE_WARMUP_RUNS = 2
# Graphs are per (image size, text length, batch); the least recently used beyond this go.
_MAX_GRAPHS = 64
# Compiled variants of one block's forward that dynamo keeps. They are per code object, so
# every engine in a process adds to them (the benchmark's variants, the GPU tests' engines),
# and one engine makes about three (batch of one or more, text mask or none); with
# fullgraph=True a hit of the default 8 would fail the request instead of running eager.
_RECOMPILE_LIMIT = 64
# torch._scaled_mm's e4m3 matmuls: Ada (8.9), Hopper (9.0) and newer.
_FP8_CAPABILITY = (8, 9)

_SDPA_ORDER: dict[str, list[SDPBackend]] = {
    "cudnn": [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ],
    "flash": [
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ],
    "efficient": [
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.MATH,
    ],
}


@dataclass(frozen=True)
class Levers:
    """Which levers to pull; `from_settings` reads them, `off()` is stock diffusers."""

    attention_backend: AttentionBackend = "default"
    compile_transformer: bool = False
    compile_mode: CompileMode = "default"
    fuse_qkv: bool = False
    real_rope: bool = False
    gelu_epilogue: bool = False
    cuda_graph_max_pixels: int = 0
    paired_cfg_max_pixels: int = 0
    vae_conv2d: bool = False
    vae_channels_last: bool = False
    compile_vae: bool = False
    fp8_matmuls: bool = False
    fp8_rowwise: bool = True
    fp8_bf16_edge_blocks: int = 1
    step_cache_threshold: float = 0.0  # 0: no step cache

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> Levers:
        if not settings.acceleration:
            return cls.off()
        return cls(
            attention_backend=settings.attention_backend,
            compile_transformer=settings.compile_transformer,
            compile_mode=settings.compile_mode,
            fuse_qkv=settings.fuse_qkv,
            real_rope=settings.real_rope,
            gelu_epilogue=settings.gelu_epilogue,
            cuda_graph_max_pixels=settings.cuda_graph_max_pixels,
            paired_cfg_max_pixels=settings.paired_cfg_max_pixels,
            vae_conv2d=settings.vae_conv2d,
            vae_channels_last=settings.vae_channels_last,
            compile_vae=settings.compile_vae,
            fp8_matmuls=settings.fp8_matmuls,
            fp8_rowwise=settings.fp8_scaling == "row",
            fp8_bf16_edge_blocks=settings.fp8_bf16_edge_blocks,
            step_cache_threshold=settings.step_cache_threshold if settings.step_cache else 0.0,
        )

    @classmethod
    def off(cls) -> Levers:
        return cls()


@dataclass
class Accelerated:
    """What `accelerate` did to a pipeline; `forward` and `paired` are set when the
    transformer is wrapped, `fp8` and `step_cache` when those fast modes are on."""

    active: list[str] = field(default_factory=list)
    forward: AcceleratedForward | None = None
    paired: PairedGuidance | None = None
    fp8: Fp8Report | None = None
    step_cache: CachedBlocks | None = None

    @property
    def per_shape(self) -> bool:
        """True when some lever compiles or captures per image shape: warm every size."""
        return any(name in self.active for name in ("compile_transformer", "cuda_graphs"))

    @property
    def batch_coupling(self) -> str | None:
        """The fast mode that decides for a whole batch at once, if one is on: a job's image
        would then depend on the jobs it shares a batch with, so the engine must make one
        image per call."""
        if self.step_cache is not None:
            return "the step cache skips steps for the whole batch"
        if "fp8_tensor" in self.active:
            return "per-tensor FP8 scales activations over the whole batch"
        return None


def batch_limit(settings: WorkerSettings, done: Accelerated) -> BatchLimit:
    """BATCH_MAX_IMAGES and BATCH_MAX_PIXELS, unless a fast mode couples a batch's images."""
    limit = BatchLimit(settings.batch_max_images, settings.batch_max_pixels)
    if done.batch_coupling is not None and limit.max_images > 1:
        logger.info("batching off: %s", done.batch_coupling)
        return ONE_AT_A_TIME
    return limit


def accelerate(pipe: QwenImagePipeline, levers: Levers, *, allow_cpu: bool = False) -> Accelerated:
    """Pull `levers` on `pipe` in place, after it was moved to its device (see
    `install_joint_attention`).

    On a CPU nothing happens, unless `allow_cpu`: then the device-agnostic levers (fused QKV,
    real RoPE, the GELU epilogue, 2-D VAE convolutions, channels-last, SDPA order, CFG's
    forwards joined, FP8 through the CPU's torch._scaled_mm, the step cache) are pulled and
    the CUDA-only ones (compile, graphs) skipped. FP8 on a GPU older than Ada or Hopper
    raises: that setting cannot be honoured there.
    """
    done = Accelerated()
    parts: Any = pipe
    on_cuda = parts.device.type == "cuda"
    if not on_cuda and not allow_cpu:
        logger.info("speed levers off: the model runs on %s", parts.device)
        return done
    transformer = parts.transformer
    if levers.fuse_qkv or levers.real_rope:
        install_joint_attention(transformer, fuse=levers.fuse_qkv, real_rope=levers.real_rope)
        done.active += [name for name in ("fuse_qkv", "real_rope") if getattr(levers, name)]
    if levers.fp8_matmuls:
        capability = torch.cuda.get_device_capability(parts.device) if on_cuda else None
        if capability is not None and capability < _FP8_CAPABILITY:
            raise RuntimeError(
                "FP8_MATMULS needs a GPU of compute capability 8.9 or newer (Ada, Hopper); "
                f"this one is {capability[0]}.{capability[1]}"
            )
        done.fp8 = quantise_blocks(transformer, levers.fp8_rowwise, levers.fp8_bf16_edge_blocks)
        done.active.append("fp8_row" if levers.fp8_rowwise else "fp8_tensor")
    if levers.gelu_epilogue:
        use_gelu_epilogues(transformer)
        done.active.append("gelu_epilogue")
    if levers.vae_conv2d:
        use_conv2d_for_single_frames(parts.vae)
        done.active.append("vae_conv2d")
    if levers.vae_channels_last:
        to_channels_last(parts.vae)
        done.active.append("vae_channels_last")
    mode = None if levers.compile_mode == "default" else levers.compile_mode
    if on_cuda and levers.compile_transformer:
        # Dynamic shapes: one compiled block serves every image size and prompt length, so
        # a prompt of a new length never recompiles inside a request.
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, _RECOMPILE_LIMIT)
        transformer.compile_repeated_blocks(fullgraph=True, dynamic=True, mode=mode)
        done.active.append("compile_transformer")
    if on_cuda and levers.compile_vae:
        parts.vae.decoder.compile(dynamic=True, mode=mode)
        done.active.append("compile_vae")
    if levers.step_cache_threshold > 0:
        done.step_cache = install_step_cache(transformer, levers.step_cache_threshold)
        done.active.append("step_cache")
    # The step cache decides on the host between blocks: no graph can hold such a forward.
    graph_pixels = levers.cuda_graph_max_pixels if on_cuda and done.step_cache is None else 0
    order = _SDPA_ORDER.get(levers.attention_backend)
    if order is not None or graph_pixels > 0:
        done.forward = AcceleratedForward(transformer.forward, order, graph_pixels)
        transformer.forward = done.forward
        if order is not None:
            done.active.append(f"attention_{levers.attention_backend}")
        if graph_pixels > 0:
            done.active.append("cuda_graphs")
    # Outside the graphs, so the joined forward is graphed; a fast mode that couples a
    # batch's images would couple the prompt's and the negative prompt's too.
    if levers.paired_cfg_max_pixels > 0 and done.batch_coupling is None:
        done.paired = PairedGuidance(
            transformer.forward, parts.encode_prompt, levers.paired_cfg_max_pixels
        )
        transformer.forward = done.paired
        parts.encode_prompt = done.paired.encode_prompt
        done.active.append("paired_cfg")
    logger.info("speed levers on %s: %s", parts.device, ", ".join(done.active) or "none")
    return done


# --- VAE -------------------------------------------------------------------------------------


def use_conv2d_for_single_frames(vae: nn.Module) -> int:
    """Route the VAE's causal 3-D convolutions through 2-D ones when they see one frame.

    A text-to-image latent has one frame, and a causal kernel of depth 2p+1 pads it with 2p
    zero frames in front, so only the kernel's last time slice ever meets data: a 2-D
    convolution with that slice is the same sum without the zero products (a third of the
    FLOPs of a 3x3x3 kernel). Returns how many convolutions were rerouted.
    """
    count = 0
    for module in vae.modules():
        if not isinstance(module, QwenImageCausalConv3d):
            continue
        conv: Any = module
        depth, front = conv.kernel_size[0], conv._padding[4]
        if depth != front + 1 or conv.stride[0] != 1 or conv.dilation != (1, 1, 1):
            continue
        if conv.groups != 1:
            continue
        conv.register_buffer(
            "weight_2d", conv.weight.detach()[:, :, -1].contiguous(), persistent=False
        )
        conv.forward = _single_frame_forward(conv, conv.forward)
        count += 1
    return count


def _single_frame_forward(
    conv: Any, stock: Callable[..., torch.Tensor]
) -> Callable[..., torch.Tensor]:
    pad_w, _, pad_h, _, front, _ = conv._padding

    def forward(x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        # With cached frames in front (videos) the zero-padding argument does not hold.
        if x.shape[2] != 1 or (cache_x is not None and front > 0):
            return stock(x, cache_x)
        out = F.conv2d(
            x[:, :, 0],
            conv.weight_2d,
            conv.bias,
            stride=conv.stride[1:],
            padding=(pad_h, pad_w),
        )
        return out.unsqueeze(2)

    return forward


def to_channels_last(vae: nn.Module) -> None:
    """Channels-last convolution weights: cuDNN's tensor-core convolutions read NHWC natively,
    and a convolution whose weight is channels-last hands its layout on to its output."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    for tensor in [*vae.parameters(), *vae.buffers()]:
        if tensor.dim() in formats:
            tensor.data = tensor.data.contiguous(memory_format=formats[tensor.dim()])


# --- the transformer's forward: SDPA order and CUDA graphs -----------------------------------


@dataclass
class GraphStats:
    captured: int = 0
    replayed: int = 0
    failed: int = 0


# The tensors a graph reads, copied into its static buffers before each replay.
_GRAPH_INPUTS = ("hidden_states", "encoder_hidden_states", "encoder_hidden_states_mask", "timestep")


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    output: torch.Tensor


# The keyword arguments of QwenImageTransformer2DModel.forward (diffusers 0.42); a call with
# any other, or with one of _UNGRAPHED_ARGS set, runs without a graph.
_FORWARD_ARGS = {
    "hidden_states",
    "encoder_hidden_states",
    "encoder_hidden_states_mask",
    "timestep",
    "img_shapes",
    "guidance",
    "attention_kwargs",
    "controlnet_block_samples",
    "additional_t_cond",
    "return_dict",
}
_UNGRAPHED_ARGS = ("guidance", "controlnet_block_samples", "additional_t_cond")


def capture_safe_text_lengths(
    encoder_hidden_states: torch.Tensor, encoder_hidden_states_mask: torch.Tensor | None
) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
    """diffusers' `compute_text_seq_len_from_mask` (0.42), the same values without its one
    host-to-device copy (`torch.as_tensor` of a Python int), which a CUDA graph capture
    refuses: with this, a forward with a text mask (a batch of prompts of different
    lengths) can be captured too."""
    batch_size, text_seq_len = encoder_hidden_states.shape[:2]
    mask = encoder_hidden_states_mask
    if mask is None:
        return text_seq_len, None, None
    if mask.shape[:2] != (batch_size, text_seq_len):
        raise ValueError(
            f"`encoder_hidden_states_mask` shape {mask.shape} must match "
            f"(batch_size, text_seq_len)=({batch_size}, {text_seq_len})."
        )
    mask = mask.to(torch.bool)
    positions = torch.arange(text_seq_len, device=mask.device, dtype=torch.long)
    active = torch.where(mask, positions, positions.new_zeros(()))
    per_sample_len = torch.where(
        mask.any(dim=1), active.max(dim=1).values + 1, positions.new_full((), text_seq_len)
    )
    return text_seq_len, per_sample_len, mask


class AcceleratedForward:
    """Stands in for `transformer.forward`: sets the SDPA kernel order around each call, and
    replays a CUDA graph of the whole forward for small images (DESIGN.md: at 512x512 a graph
    runs 3.4x faster than eager launches).

    A graph is captured per (image shape, text length, batch, text mask or none) on first
    use, into one memory pool that all graphs share (they never run at the same time); the
    first use of a new prompt length at a small size pays for a capture (three forwards).
    Only calls it can replay exactly take the graph path: no guidance, no ControlNet,
    inference mode. If a capture fails, graphs are switched off (for masked calls only, when
    the failed capture had a mask) and those calls run without one.
    """

    def __init__(
        self,
        forward: Callable[..., Any],
        sdpa_order: list[SDPBackend] | None,
        graph_max_pixels: int,
    ) -> None:
        self._forward = forward
        self._sdpa_order = sdpa_order
        self._graph_max_tokens = graph_max_pixels // PIXELS_PER_TOKEN
        self._graph_masks = self._graph_max_tokens > 0
        if self._graph_masks:
            transformer_qwenimage.compute_text_seq_len_from_mask = capture_safe_text_lengths
        self._graphs: OrderedDict[tuple[Any, ...], _Graph] = OrderedDict()
        self._pool: Any = None
        self.stats = GraphStats()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "attention_kwargs" in kwargs and not kwargs["attention_kwargs"]:
            # The pipeline passes {}, a graph capture None: the same forward, but compiled
            # blocks guard on which, so one would compile every variant twice.
            kwargs["attention_kwargs"] = None
        with self._sdpa():
            key = None if args else self._graph_key(kwargs)
            if key is None:
                return self._forward(*args, **kwargs)
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._capture(key, kwargs)
                if entry is None:
                    return self._forward(**kwargs)
            self._graphs.move_to_end(key)
            for name, buffer in entry.inputs.items():
                buffer.copy_(kwargs[name])
            entry.graph.replay()
            self.stats.replayed += 1
            # The graph's output buffer is rewritten by the next replay: hand out a copy.
            out = entry.output.clone()
        return forward_output(out, kwargs)

    def _sdpa(self) -> contextlib.AbstractContextManager[None]:
        if self._sdpa_order is None:
            return contextlib.nullcontext()
        return sdpa_kernel(self._sdpa_order, set_priority=True)

    def _graph_key(self, kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
        """The graph's identity for a call it can replay exactly, else None."""
        hidden = kwargs.get("hidden_states")
        text = kwargs.get("encoder_hidden_states")
        timestep = kwargs.get("timestep")
        mask = kwargs.get("encoder_hidden_states_mask")
        if self._graph_max_tokens <= 0 or set(kwargs) - _FORWARD_ARGS:
            return None
        if not (
            isinstance(hidden, torch.Tensor)
            and isinstance(text, torch.Tensor)
            and isinstance(timestep, torch.Tensor)
        ):
            return None
        if mask is not None and not (self._graph_masks and isinstance(mask, torch.Tensor)):
            return None
        if any(kwargs.get(name) is not None for name in _UNGRAPHED_ARGS):
            return None
        if kwargs.get("attention_kwargs") or not hidden.is_cuda:
            return None
        if hidden.shape[1] > self._graph_max_tokens or not torch.is_inference_mode_enabled():
            return None
        if torch.cuda.is_current_stream_capturing():
            return None
        return (
            tuple(hidden.shape),
            tuple(text.shape),
            tuple(timestep.shape),
            None if mask is None else (tuple(mask.shape), mask.dtype),
            hidden.dtype,
            text.dtype,
            timestep.dtype,
            repr(kwargs.get("img_shapes")),
        )

    def _capture(self, key: tuple[Any, ...], kwargs: dict[str, Any]) -> _Graph | None:
        inputs = {
            name: kwargs[name].clone()
            for name in _GRAPH_INPUTS
            if isinstance(kwargs.get(name), torch.Tensor)
        }
        static = inputs | {"img_shapes": kwargs.get("img_shapes"), "return_dict": False}
        masked = "encoder_hidden_states_mask" in inputs
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(_CAPTURE_WARMUP_RUNS):
                    self._forward(**static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                output = self._forward(**static)[0]
        except Exception:
            # A failed capture is about the model or the kernels, not this shape: stop trying
            # (masked calls only, when this one had a mask).
            logger.warning(
                "CUDA graph capture failed for %s%s; CUDA graphs are off from now on%s",
                key[:3],
                " with a text mask" if masked else "",
                " for calls with a text mask" if masked else "",
                exc_info=True,
            )
            if masked:
                self._graph_masks = False
            else:
                self._graph_max_tokens = 0
            self.stats.failed += 1
            return None
        entry = _Graph(graph, inputs, output)
        self._graphs[key] = entry
        self.stats.captured += 1
        while len(self._graphs) > _MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return entry
