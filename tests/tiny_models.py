"""Tiny from-config models of every registered family (no download): for tests and smoke runs."""

from __future__ import annotations

import torch

_T = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          head_dim=8, vocab_size=96, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_MOE = dict(moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2)
_VISION = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32)
_HYBRID = dict(layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2, linear_num_value_heads=4,
               linear_key_head_dim=8, linear_value_head_dim=8)

TINY_CONFIGS: dict[str, dict] = {
    "llama": _T,
    "qwen2": _T,
    "qwen3": _T,
    "gemma": _T,
    "gemma2": _T,
    "gemma3_text": _T,
    "qwen2_moe": {**_T, **_MOE, "shared_expert_intermediate_size": 16},
    "qwen3_moe": {**_T, **_MOE},
    "gpt_oss": {**_T, "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 16},
    "qwen3_5": {"text_config": {**_T, **_HYBRID}, "vision_config": _VISION},
    "qwen3_5_text": {**_T, **_HYBRID},
    "qwen3_5_moe_text": {**_T, **_HYBRID, **_MOE, "shared_expert_intermediate_size": 16},
    "qwen3_5_moe": {"text_config": {**_T, **_HYBRID, **_MOE, "shared_expert_intermediate_size": 16}, "vision_config": _VISION},
    "qwen2_5_vl": {"text_config": {**_T, "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}}, "vision_config": _VISION},
    "gemma3": {"text_config": _T, "vision_config": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                        num_attention_heads=2, image_size=28, patch_size=14), "mm_tokens_per_image": 4},
    "bailing_hybrid": {**_T, "moe_intermediate_size": 16, "num_local_experts": 4, "num_experts_per_tok": 2, "n_group": 1,
                       "topk_group": 1, "num_shared_experts": 1, "first_k_dense_replace": 1, "layer_group_size": 2,
                       "num_key_value_heads": 4},
}


def tiny_model(model_type: str, seed: int = 0, dtype=torch.float32, vocab_size: int | None = None, **text_overrides):
    """A seeded random-init model of ``model_type`` in eval mode, built with the family's loader class
    (``text_overrides``: config values of the text model, e.g. a short sliding window)."""
    from transformers import AutoConfig

    from maxact.models.registry import family_for, loader_class

    kw = TINY_CONFIGS[model_type]
    text = {**({"vocab_size": vocab_size} if vocab_size is not None else {}), **text_overrides}
    if text:
        kw = {**kw, "text_config": {**kw["text_config"], **text}} if "text_config" in kw else {**kw, **text}
    cfg = AutoConfig.for_model(model_type, **kw)
    fam = family_for(cfg)
    torch.manual_seed(seed)
    model = loader_class(fam, cfg.model_type).from_config(cfg, dtype=dtype)
    # Random init gives unit-scale activations; scale the norms so that some points get large values.
    return model.eval()


def save_tiny_checkpoint(model_type: str, folder, seed: int = 0, **text_overrides):
    """A tiny random ``model_type`` saved as a user's checkpoint folder: safetensors weights, config and a
    byte-level tokenizer (what ``maxact measure --model FOLDER`` loads)."""
    from maxact.models.checkpoints import byte_tokenizer

    tok = byte_tokenizer()
    model = tiny_model(model_type, seed=seed, vocab_size=len(tok), **text_overrides)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def reference_layer_extremes(folder, texts, max_len):
    """layer index -> (max, min) of the decoder layer outputs over all samples, and the layer count: an
    independent float64 reference (transformers' own loader, AutoTokenizer, eager attention and experts,
    one sample at a time, no padding; nothing of maxact's engine or registry)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    cfg = AutoConfig.from_pretrained(folder)
    cls = AutoModelForImageTextToText if hasattr(cfg, "vision_config") else AutoModelForCausalLM
    # eager attention and eager experts: the plainest float64 forward (grouped_mm has no float64 kernel).
    model = cls.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager", experts_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(folder)
    layers = model.get_decoder().layers
    ext = {}

    def hook(i):
        def h(m, args, out):
            t = (out[0] if isinstance(out, tuple) else out).detach()
            mx, mn = t.max().item(), t.min().item()
            old = ext.get(i, (-float("inf"), float("inf")))
            ext[i] = (max(old[0], mx), min(old[1], mn))
        return h

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    with torch.no_grad():
        for text in texts:
            ids = tok(text, add_special_tokens=False)["input_ids"][:max_len]
            x = torch.tensor([ids])
            model.get_decoder()(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
    for h in handles:
        h.remove()
    return ext, len(layers)


def call_without_fla(module: str, name: str, *args, path=()):
    """``module.name(*args)`` where flash-linear-attention cannot be imported: transformers binds fla's Triton
    kernels when it imports the model code, whatever the device, and they cannot take a CPU reference's tensors.
    Called here when fla is not installed, else in a child process that hides it (``args`` as Python literals,
    ``path`` more folders to import from; the result comes back through torch.save)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("fla") is None:
        return getattr(importlib.import_module(module), name)(*args)
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    folders = [str(Path(__file__).resolve().parent), *map(str, path)]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.pt")
        code = (f"import importlib, sys, torch; sys.modules['fla'] = None; sys.path[:0] = {folders!r}\n"
                f"torch.save(getattr(importlib.import_module({module!r}), {name!r})(*{args!r}), {out!r})")
        subprocess.run([sys.executable, "-c", code], check=True)
        return torch.load(out, weights_only=False)
