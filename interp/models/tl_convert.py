"""Build a TransformerLens HookedTransformer from a loaded Hugging Face model, offline and without name guessing.

TransformerLens picks configs by model name (and fetches configs from a hub for unknown ones); here the config is
read off the Hugging Face config of the model in hand, one small function per family, and the weights are
converted with TransformerLens' own converters with every processing step off, so activations match the HF model.
"""

from __future__ import annotations

from typing import Any


def _rope_theta(cfg: Any, layer_type: str | None = None) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    if layer_type and layer_type in params:
        params = params[layer_type]
    return float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))


def _gpt2(cfg: Any) -> dict:
    return {
        "d_model": cfg.n_embd,
        "d_head": cfg.n_embd // cfg.n_head,
        "n_heads": cfg.n_head,
        "d_mlp": cfg.n_inner or 4 * cfg.n_embd,
        "n_layers": cfg.n_layer,
        "n_ctx": cfg.n_positions,
        "eps": cfg.layer_norm_epsilon,
        "d_vocab": cfg.vocab_size,
        "act_fn": cfg.activation_function,
        "use_attn_scale": True,
        "scale_attn_by_inverse_layer_idx": cfg.scale_attn_by_inverse_layer_idx,
        "normalization_type": "LN",
    }


def _rms_decoder(cfg: Any, d_head: int, act_fn: str) -> dict:
    """The fields Llama and Gemma configs name the same way (RMS-normed, rotary, gated-MLP decoders)."""
    return {
        "d_model": cfg.hidden_size,
        "d_head": d_head,
        "n_heads": cfg.num_attention_heads,
        "d_mlp": cfg.intermediate_size,
        "n_layers": cfg.num_hidden_layers,
        "n_ctx": cfg.max_position_embeddings,
        "eps": cfg.rms_norm_eps,
        "d_vocab": cfg.vocab_size,
        "act_fn": act_fn,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "final_rms": True,
        "gated_mlp": True,
    }


def _llama(cfg: Any) -> dict:
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {
        **_rms_decoder(cfg, d_head, cfg.hidden_act),
        "n_key_value_heads": cfg.num_key_value_heads
        if cfg.num_key_value_heads != cfg.num_attention_heads
        else None,
        "rotary_adjacent_pairs": False,
        "rotary_dim": d_head,
        "rotary_base": _rope_theta(cfg),
    }


def _gemma(cfg: Any) -> dict:
    layer_types = list(cfg.layer_types)
    out = {
        **_rms_decoder(cfg, cfg.head_dim, cfg.hidden_activation),
        "use_attn_scale": True,
        "attn_scale": float(cfg.query_pre_attn_scalar) ** 0.5,
        "n_key_value_heads": cfg.num_key_value_heads,
        "use_normalization_before_and_after": True,
        "window_size": cfg.sliding_window,
        "use_local_attn": True,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in layer_types],
    }
    if cfg.model_type == "gemma2":
        out["rotary_base"] = _rope_theta(cfg)
        out["attn_scores_soft_cap"] = cfg.attn_logit_softcapping or -1.0
        out["output_logits_soft_cap"] = cfg.final_logit_softcapping or -1.0
    else:  # gemma3: qk-norm, and separate rope bases for global and local layers
        out["use_qk_norm"] = True
        out["rotary_base"] = _rope_theta(cfg, "full_attention")
        out["rotary_base_local"] = _rope_theta(cfg, "sliding_attention")
    return out


# family -> (config builder, TL architecture name, TL weight converter name)
_FAMILY_TABLE = {
    "gpt2": (_gpt2, "GPT2LMHeadModel", "convert_gpt2_weights"),
    "llama": (_llama, "LlamaForCausalLM", "convert_llama_weights"),
    "gemma2": (_gemma, "Gemma2ForCausalLM", "convert_gemma_weights"),
    "gemma3": (_gemma, "Gemma3ForCausalLM", "convert_gemma_weights"),
}


def to_hooked_transformer(model: Any) -> Any:
    """A HookedTransformer with `model.hf`'s weights (no folding or centering), on the same device and dtype."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained import weight_conversions

    build, architecture, converter = _FAMILY_TABLE[model.info.family]
    hf = model.hf
    dtype = next(hf.parameters()).dtype
    cfg = HookedTransformerConfig(
        **build(hf.config),
        original_architecture=architecture,
        model_name=model.info.name,
        device=str(model.device),
        dtype=dtype,
        default_prepend_bos=False,  # interp passes token ids with BOS already in place
    )
    state_dict = getattr(weight_conversions, converter)(hf, cfg)
    tl = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    tl.tokenizer = model.tokenizer  # set directly: TL's set_tokenizer re-loads it by name, which needs a hub
    tl.load_and_process_state_dict(
        state_dict, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    tl.to(model.device)
    tl.eval()
    tl.requires_grad_(False)
    return tl
