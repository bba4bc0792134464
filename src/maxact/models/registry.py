"""One registry of hook maps: one entry per architecture family, keyed by ``config.model_type``.

An entry names, by attribute path, the text backbone and every hook point of a decoder layer.
Nothing is guessed from substrings: an unknown ``model_type`` is an error listing the supported ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from maxact import points
from maxact.errors import InputError


class UnsupportedArchitectureError(InputError):
    pass


@dataclass(frozen=True)
class MoESpec:
    """How to read an MoE block (the layer's ``mlp`` when it has ``router`` as a child)."""

    router: str  # child of the MoE block that routes tokens
    # layer_{i}_moe_gate: which tensor of the router's output and how the published files transform it
    moe_gate_index: int = 0
    moe_gate_transform: str = "identity"  # 'identity' | 'softmax'
    indices_index: int | None = 2  # router output element holding the selected experts [N, k]
    router_logits_from_block: int | None = None  # MoE block output element holding router scores/logits
    router_logits_from_router: int | None = None  # or: the router's output element
    experts: str = "experts"
    expert_act: str | None = "act_fn"  # module whose *input* is the expert gate pre-activation
    num_experts_attr: str = "num_experts"  # attribute of the router


# Attention implementations by what they need. SDPA and eager run anywhere. Flex attention is compiled
# (torch.compile); transformers' flex path cannot apply attention sinks on the CPU, and on the CPU it is
# no faster than eager, so it is a CUDA-only choice here. flash_attention_2 needs the flash-attn package.
ATTENTION_NEEDS_CUDA = frozenset({"flex_attention", "flash_attention_2", "flash_attention_3"})
_DEFAULT_ATTENTION = ("sdpa", "flash_attention_2", "eager")


@dataclass(frozen=True)
class Packing:
    """Whether the family can run packed rows (several samples in one row, no padding) exactly, and how.

    ``varlen``: on CUDA in bf16/fp16, packed rows with per-sample boundaries (cumulative lengths) compute every
    attention layer of the family exactly through ``kernel`` (causal, sliding windows, gpt-oss sinks through the
    LSE, Gemma 2's soft-cap in FlexAttention).
    ``block_mask``: transformers' own block-diagonal packed mask (SDPA or eager, built from position ids
    that restart per sample) computes it exactly; the CPU path (and CUDA in float32).
    ``positions``: 'plain' position ids [1, N]; 'mrope_text' [4, 1, N] (text positions first, then the three
    M-RoPE rows: what Qwen2.5-VL's text model needs to see the sample boundaries).
    ``block_mask_from``: 'positions' (the backbone builds the packed mask itself from position ids that restart,
    as most do) or 'mapping' (its forward builds masks without the position ids, so maxact builds transformers'
    full and sliding-window packed masks and passes them as the backbone's mask mapping).
    ``kernel``: the packed attention on CUDA: 'varlen_attn' (flash attention) or 'flex_attention' (FlexAttention
    with a document block mask: logit soft-capping, which flash attention cannot apply).
    ``why_not``: what stops a path the family does not take (shown when packing is asked for).
    """

    varlen: bool = True
    kernel: str = "varlen_attn"
    block_mask: bool = True
    positions: str = "plain"
    block_mask_from: str = "positions"
    recurrent: str | None = None  # 'gated_deltanet': linear-attention layers that pack under conditions (packing.py)
    why_not: str = ""


# Gated DeltaNet (linear attention) layers carry a recurrent state and a causal conv1d along the row: packed
# exactly only when both restart at each sample. Qwen3.5's chunked rule restarts with fla's kernel
# (cu_seqlens; transformers' torch reference ignores them) and maxact swaps in a causal conv that keeps the
# samples apart (maxact.models.packed_recurrent), so Qwen3.5 packs on CUDA where fla is installed ([gpu]).
# The Bailing hybrid's own linear attention has no such path checked: it stays padded.
_QWEN3_5_PACKING = Packing(block_mask=False, recurrent="gated_deltanet", why_not=(
    "its Gated DeltaNet (linear attention) layers pack only with flash-linear-attention's chunked kernel, which keeps "
    "the samples' recurrent states apart (CUDA, pip install .[gpu]); transformers' torch reference does not"))
_RECURRENT_PADDED = Packing(varlen=False, block_mask=False, why_not=(
    "its Gated DeltaNet (linear attention) layers run a causal conv1d and a recurrent state along the whole row, "
    "and no packed path that restarts them at sample boundaries is checked for this family"))


@dataclass(frozen=True)
class Compile:
    """Regional compilation (each decoder layer once, ``torch.compile(dynamic=True)``; bf16/fp16 with eager's rounding,
    ``compiled.INDUCTOR_OPTIONS``) for this family.

    ``checked``: device types on which compiled and eager measurements were checked to agree within the stated
    bounds, and the compiled one faster: ``measure.compile: auto`` compiles there only. ``why_not``: what stops the
    family compiling at all (then ``on`` is refused and ``auto`` runs eager, with this reason recorded).
    """

    checked: tuple[str, ...] = ()
    why_not: str = ""
    # What was checked and what is missing where ``checked`` lacks a device (recorded with the eager run's reason).
    note: str = ""
    # Why the compiled layer's graph breaks where the forward is packed (none expected elsewhere: the CUDA checks
    # accept breaks only where this says why), and dynamo's reasons for those breaks: the checks accept no other.
    breaks: str = ""
    break_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    loader: str = "causal_lm"  # 'causal_lm' | 'image_text_to_text'
    # model_type -> loader, where one family has both a multimodal wrapper and a text-only checkpoint
    # (qwen3_5 loads as image-text-to-text, qwen3_5_text as a causal LM).
    loader_by_type: tuple[tuple[str, str], ...] = ()
    # Attention implementations that compute this family's attention exactly (softcapping, sinks,
    # sliding windows), fastest first; the first one the device can run is the default.
    attention: tuple[str, ...] = _DEFAULT_ATTENTION
    backbone: tuple[str, ...] = ("model",)  # attribute paths tried in order; the first with `.layers`
    attn: tuple[str, ...] = ("self_attn",)  # the layer has exactly one of these
    mlp: str = "mlp"
    gate_proj: str | None = "gate_proj"  # child of a dense MLP whose output is the SwiGLU gate
    residual_in: tuple[tuple[str, str], ...] = ()  # (point suffix, layer child) for sandwich norms
    moe: MoESpec | None = None
    final_norm: str = "norm"
    # Published peaks of the family exceed float16's range (65,504): fp16 is refused unless forced.
    fp16_unsafe: bool = False
    remote_code: bool = False
    packing: Packing = Packing()
    compile: Compile = Compile()
    notes: str = ""


# Gemma 2 soft-caps attention logits and gpt-oss adds a learned sink per head: transformers' SDPA path
# implements neither (both classes refuse it). Eager computes both directly and is the default. Flex
# attention applies them too (score modification / LSE renormalisation) and may be chosen, but it is not
# the default: transformers compiles it per mask function and shape, so a study's many padded batch
# shapes hit torch.compile's recompile limit and fall back to a score-materialising path, and a short
# last batch failed to lower (seen on an H200, torch 2.11 + transformers 5.24).
_NO_SDPA = ("eager", "flex_attention")
_SANDWICH = (("attn_residual_in", "post_attention_layernorm"), ("mlp_residual_in", "post_feedforward_layernorm"))
_QWEN_MOE = MoESpec(router="gate", moe_gate_transform="softmax")

# measure.compile (maxact.measurement.compiled). auto compiles where compiled and eager agree within the stated bounds
# on the GPU (tests/measurement/test_cuda_compiled.py, bf16 and float32: benchmarks/measured/h100-2026-12-06-compile,
# h100-2026-12-07-compile, h100-2026-12-07b-equality, h100-2026-12-07c-equality) and the compiled measurement was
# measured faster than the eager one by at least AUTO_MIN_GAIN in every round (benchmarks/throughput.py, families.py
# --compiled: h200-2026-12-06-compile-fixed, h100-2026-12-07-compile; timed before bf16 layers were compiled with
# eager's rounding, compiled.INDUCTOR_OPTIONS, and not timed since). The first speed figures
# (h100-2026-12-06-compile) are void: the compiled bare forward ran first there and dynamo reused its hook-less graph for
# the measurement (fixed in RegionalCompile), so they timed no statistic inside the layers. The 4-layer figures of
# families.py (one batch of 30,378 tokens) likely understate a full model's gain: the per-batch costs outside the
# layers (embedding and final-norm points, the fold, the host transfer) are the same compiled or not (not checked:
# no shape was measured at both depths).
#: compiled / eager packed measurement at or above which a family equal on the GPU compiles under auto: beyond the
#: spread of a benchmark's rounds (gpt-oss: 1.19x and 1.21x), so that a compiled default is faster, not a coin toss.
AUTO_MIN_GAIN = 1.10
_COMPILED_CUDA = Compile(checked=("cuda",))
_EQUAL_NOT_TIMED = Compile(note="compiled and eager agree on an H100 (bf16 and float32, tiny size); its compiled speed is not "
                                "measured yet (benchmarks/families.py --compiled)")


def _equal_timed(rounds: tuple[float, ...], checkpoint: str, breaks: str = "", break_reasons: tuple[str, ...] = ()) -> Compile:
    """Compiled and eager checked equal on CUDA, and the compiled measurement timed at ``rounds`` times the eager one
    (families.py --compiled, round by round): ``auto`` compiles on CUDA only if every round reached AUTO_MIN_GAIN. The
    note keeps the figures; ``breaks``: why the packed graph breaks where it does, ``break_reasons``: dynamo's reasons."""
    figures = " and ".join(f"{g:.3f}x" for g in rounds)
    faster = min(rounds) >= AUTO_MIN_GAIN
    return Compile(checked=("cuda",) if faster else (), breaks=breaks, break_reasons=break_reasons,
                   note=f"compiled and eager agree on an H100 (bf16 and float32, tiny size); compiled / eager measurement "
                        f"{figures} in {len(rounds)} rounds ({checkpoint} shape, first 4 layers, H100; goal 1.2x; not "
                        "measured at full depth)" + ("" if faster else f": auto compiles only where every round reaches "
                                                     f"{AUTO_MIN_GAIN:.2f}x"))


_GEMMA3_COMPILE = _equal_timed((1.165, 1.153), "gemma-3-4b-it")  # Gemma 3's multimodal and text-only model types: one decoder
_QWEN3_5_COMPILE = Compile(note="compiled and eager agree on an H100 (bf16 within 2 bf16 steps, before eager's rounding was "
                                "asked of inductor; float32 within 1.2e-5; tiny size, all four model types: "
                                "h100-2026-12-07c-equality); fla's chunked rule runs eager inside the compiled layers (fla "
                                "marks it torch.compiler.disable); a bf16 process compiled for 338-359 s (8 cases side by "
                                "side); speed not measured")


def _qwen3_5_hybrid(name: str, **kw) -> Family:
    """Qwen3.5 (dense or MoE): the multimodal wrapper ``<name>`` loads as image-text-to-text, the text-only
    ``<name>_text`` as a causal LM; Gated-DeltaNet (``linear_attn``) and full-attention layers alternate."""
    return Family(name, (name, f"{name}_text"), loader="image_text_to_text", loader_by_type=((f"{name}_text", "causal_lm"),),
                  backbone=("model.language_model", "model"), attn=("linear_attn", "self_attn"), packing=_QWEN3_5_PACKING, **kw)


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), compile=_EQUAL_NOT_TIMED, notes="SmolLM2, Llama"),
    Family("qwen2", ("qwen2",), compile=_equal_timed((0.979, 0.998), "Qwen2.5-7B"), notes="Qwen2.5 base and instruct"),
    Family("qwen2_moe", ("qwen2_moe",), moe=_QWEN_MOE, compile=_EQUAL_NOT_TIMED),
    Family("qwen3", ("qwen3",), compile=_COMPILED_CUDA),  # H200, Qwen3-8B shape: 1.25x the eager packed measurement
    # H100, Qwen3-30B-A3B shape (48 layers): 1.55x the eager packed measurement
    Family("qwen3_moe", ("qwen3_moe",), moe=_QWEN_MOE, compile=_COMPILED_CUDA),
    _qwen3_5_hybrid("qwen3_5", compile=_QWEN3_5_COMPILE, notes="hybrid Gated-DeltaNet linear attention + full attention"),
    _qwen3_5_hybrid("qwen3_5_moe", moe=_QWEN_MOE, compile=_QWEN3_5_COMPILE),
    Family("qwen2_5_vl", ("qwen2_5_vl",), loader="image_text_to_text", backbone=("model.language_model",),
           packing=Packing(positions="mrope_text"), compile=_equal_timed((1.112, 0.995), "Qwen2.5-VL-7B")),
    Family("gemma", ("gemma",), fp16_unsafe=True, compile=_equal_timed((0.998, 0.948), "gemma-2b"), notes="Gemma 1"),
    Family("gemma2", ("gemma2",), residual_in=_SANDWICH, fp16_unsafe=True, attention=_NO_SDPA,
           # Eager applies the soft-cap under transformers' packed block mask (CPU); on CUDA varlen_attn cannot, so
           # maxact's FlexAttention function does (the cap as score_mod, a document block mask, power-of-two rows).
           packing=Packing(kernel="flex_attention"),
           compile=_equal_timed((1.089, 1.164), "gemma-2-9b",
                                 breaks="maxact's packed FlexAttention (its own compiled kernel and per-row block-mask "
                                        "cache) runs between graphs",
                                 # dynamo skips the call into it (9 breaks, nothing else, on an H100: h100-2026-12-07-compile)
                                 break_reasons=("Attempted to call function marked as skipped",)),
           notes="attention logit soft-capping: no SDPA"),
    Family("gemma3_text", ("gemma3_text",), residual_in=_SANDWICH, fp16_unsafe=True,
           compile=_GEMMA3_COMPILE,
           notes="Gemma 3 text-only"),
    Family(
        "gemma3",
        ("gemma3",),
        loader="image_text_to_text",
        backbone=("model.language_model",),
        residual_in=_SANDWICH,
        fp16_unsafe=True,
        compile=_GEMMA3_COMPILE,
        notes="Gemma3ForConditionalGeneration",
    ),
    Family(
        "gpt_oss",
        ("gpt_oss",),
        moe=MoESpec(
            router="router",
            moe_gate_transform="identity",
            router_logits_from_block=1,
            expert_act=None,
            num_experts_attr="num_experts",
        ),
        fp16_unsafe=True,
        attention=_NO_SDPA,
        packing=Packing(block_mask_from="mapping"),
        compile=_equal_timed((1.208, 1.191), "gpt-oss-20b"),
        notes="attention sinks (no SDPA); MoE block returns (out, router_scores); published 'moe_gate' = raw router logits",
    ),
    Family(
        "bailing_moe",
        ("bailing_moe", "bailing_moe_v2"),
        # Ling-mini-2.0's remote modelling code (modeling_bailing_moe_v2.py): layers[i].attention returns
        # (out, weights, cache); layers[i].mlp is BailingMoeV2MLP (gate_proj) or BailingMoeV2SparseMoeBlock
        # with .gate (BailingMoeV2Gate -> (topk_idx, topk_weight, logits)), .experts, .shared_experts.
        # The published files' 'moe_gate' is the gate's first output (the selected expert indices) and
        # 'router_logits' its logits; both are kept as published for one-to-one comparison.
        attn=("attention", "self_attn"),
        moe=MoESpec(router="gate", moe_gate_index=0, indices_index=0, router_logits_from_router=2, expert_act=None,
                    num_experts_attr="num_experts"),
        remote_code=True,
        packing=Packing(varlen=False, block_mask=False,
                        why_not="its remote modelling code is not known to keep packed samples apart"),
        compile=Compile(why_not="its remote modelling code (not in transformers) has no from-config model to check compiled "
                                "against eager; bailing_hybrid stands in for it in the checks"),
        notes="Ling; remote code only (trust_remote_code opt-in per checkpoint)",
    ),
    Family(
        "bailing_hybrid",
        ("bailing_hybrid",),
        moe=MoESpec(router="gate", num_experts_attr="num_experts"),
        packing=_RECURRENT_PADDED,
        compile=Compile(note="compiled and eager agree on an H100 in bf16, and in float32 within 6.1e-5 (bound 1e-4) "
                             "with fla's Triton kernels in IEEE float32 (under Triton's TF32 default 7.7e-4 from layer 0's "
                             "KDA output on: h100-2026-12-07-f32-tf32, h100-2026-12-07b-equality); it runs padded, where "
                             "the MoE block's repacking of real tokens breaks the compiled graph (2 breaks); speed not "
                             "measured"),
        notes="transformers-native Bailing hybrid; stands in for Ling in tests",
    ),
)

_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def family_for(config) -> Family:
    mt = getattr(config, "model_type", None)
    try:
        return _BY_TYPE[mt]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture model_type={mt!r} ({type(config).__name__}) is not in the maxact hook registry. "
            f"Supported: {', '.join(supported_model_types())}. "
            "Add an entry to maxact.models.registry.FAMILIES naming its backbone and hook modules."
        ) from None


def get_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def has_path(obj, path: str) -> bool:
    try:
        get_path(obj, path)
        return True
    except AttributeError:
        return False


def resolve_backbone(model: torch.nn.Module, family: Family) -> torch.nn.Module:
    # A bare backbone (AutoModel / the text model itself) is accepted as well.
    candidates = [p for p in family.backbone if has_path(model, p)]
    for p in candidates:
        bb = get_path(model, p)
        if hasattr(bb, "layers"):
            return bb
    if hasattr(model, "layers") and hasattr(model, family.final_norm):
        return model
    raise UnsupportedArchitectureError(
        f"{type(model).__name__}: none of the backbone paths {family.backbone} of family {family.name!r} "
        "leads to a module with `.layers`"
    )


@dataclass
class LayerPoints:
    """The modules to hook in one decoder layer (None where the layer has no such point)."""

    index: int
    layer: torch.nn.Module
    attn: torch.nn.Module | None
    mlp: torch.nn.Module | None
    gate_proj: torch.nn.Module | None
    residual_in: dict[str, torch.nn.Module] = field(default_factory=dict)
    moe_block: torch.nn.Module | None = None
    router: torch.nn.Module | None = None
    expert_act: torch.nn.Module | None = None
    num_experts: int = 0


def layer_points(backbone: torch.nn.Module, family: Family) -> list[LayerPoints]:
    out = []
    for i, layer in enumerate(backbone.layers):
        attn = next((getattr(layer, a) for a in family.attn if hasattr(layer, a)), None)
        mlp = getattr(layer, family.mlp, None)
        lp = LayerPoints(index=i, layer=layer, attn=attn, mlp=mlp, gate_proj=None)
        moe = family.moe
        if moe is not None and mlp is not None and hasattr(mlp, moe.router):
            lp.moe_block = mlp
            lp.router = getattr(mlp, moe.router)
            experts = getattr(mlp, moe.experts, None)
            if moe.expert_act and experts is not None:
                lp.expert_act = getattr(experts, moe.expert_act, None)
            lp.num_experts = int(getattr(lp.router, moe.num_experts_attr, 0) or 0)
        elif mlp is not None and family.gate_proj:
            lp.gate_proj = getattr(mlp, family.gate_proj, None)
        for suffix, child in family.residual_in:
            if hasattr(layer, child):
                lp.residual_in[suffix] = getattr(layer, child)
        out.append(lp)
    return out


def points_module(backbone, family: Family, layers: list[LayerPoints], point: str):
    """The module whose output is the residual-stream point ``point`` (``layer_{i}_hidden`` or the final norm)."""
    kind, layer = points.parse_component(point)
    if kind == "final_norm":
        return getattr(backbone, family.final_norm)
    if kind == "hidden" and layer is not None and 0 <= layer < len(layers):
        return layers[layer].layer
    raise ValueError(f"{point!r} is not a residual-stream point of this model ({len(layers)} layers)")


def loader_for(family: Family, model_type: str) -> str:
    return dict(family.loader_by_type).get(model_type, family.loader)


def loader_class(family: Family, model_type: str):
    """The transformers Auto class that loads a checkpoint of ``model_type`` (a family member)."""
    import transformers

    if model_type not in family.model_types:
        raise UnsupportedArchitectureError(f"model_type {model_type!r} is not a member of family {family.name!r} {family.model_types}")
    if loader_for(family, model_type) == "image_text_to_text":
        return transformers.AutoModelForImageTextToText
    return transformers.AutoModelForCausalLM


class AttentionError(InputError):
    pass


def attention_usable(impl: str, device_type: str) -> bool:
    if impl in ATTENTION_NEEDS_CUDA and device_type != "cuda":
        return False
    if impl == "flash_attention_2":
        import importlib.util

        return importlib.util.find_spec("flash_attn") is not None
    return True


def resolve_attention(family: Family, requested: str | None, device_type: str) -> str:
    """The attention implementation to load ``family`` with: the user's choice where the family can run
    it on this device, else (``None``/``auto``) the family's fastest exact one that the device can run."""
    usable = [a for a in family.attention if attention_usable(a, device_type)]
    if requested in (None, "", "auto"):
        return usable[0]
    if requested not in usable:  # usable is a subset of family.attention
        why = "does not compute this family's attention" if requested not in family.attention else f"cannot run on {device_type} here"
        raise AttentionError(
            f"attention implementation {requested!r} {why} (family {family.name!r}: {family.notes or family.model_types}). "
            f"Implementations that work for {family.name} on {device_type}: {', '.join(usable)}. "
            "Set runtime.attn_implementation (or --attn-implementation) to one of them, or to auto."
        )
    return requested
