"""The GPU figures in one run: capture vs its floor, SAE-family training vs its matmul floor, MP-SAE vs TopK, SNMF.

    python benchmarks/gpu.py                  # on a CUDA device: Gemma-2-2B and Llama-3.1-8B shapes, < 5 minutes
    python benchmarks/gpu.py --preset tiny    # anywhere (CI runs it on CPU): the same code paths at toy sizes

Models are built from the real configs with random weights (speed does not depend on weight values; nothing is
downloaded), in bfloat16 on CUDA, float32 on CPU. Every figure is a ratio against a floor measured in the same run:
- capture (2 sites of the middle layer; resid_post of every layer) over the floor: the same model truncated after
  the last captured block, no hooks, no final norm, no unembedding, no disk. Capture includes the hooks, the copies
  to the CPU and the disk writes into a temporary store.
- one SAE training step (TopK, BatchTopK, MP-SAE) as a multiple of one `[batch, d_in] x [d_in, n_latents]` matmul
  (the encoder's forward, the floor of any SAE step); rows/s; MP-SAE's step over TopK's.
- one SNMF iteration over a product with A (`[n, d] x [d, k]`), rows/s.
CUDA timings synchronize before reading the clock; the first call of each is a warm-up, outside the timer, and each
side of a ratio is timed the same way (best of the same number of calls).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import torch

# the shapes of the real models (their config.json), random weights
CONFIGS = {
    "gemma-2-2b": ("Gemma2Config", {"hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                                    "vocab_size": 256000, "query_pre_attn_scalar": 256, "sliding_window": 4096}),
    "llama-3.1-8b": ("LlamaConfig", {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                                     "rope_theta": 500000.0}),
}  # fmt: skip
PRESETS = {  # models, contexts x length, batch; SAE d_in, latents, k, batch; SNMF rows, k
    "full": {"models": list(CONFIGS), "n_contexts": 64, "context_len": 512, "batch": 16,
             "sae": (2304, 16384, 64, 8192), "snmf": (200_000, 9216, 512)},
    "tiny": {"models": ["tiny-gemma2", "tiny-llama"], "n_contexts": 4, "context_len": 16, "batch": 2,
             "sae": (64, 256, 8, 256), "snmf": (1000, 128, 16)},
}  # fmt: skip


def timer(device: torch.device) -> Callable[[Callable[[], object], int], float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def seconds(fn: Callable[[], object], repeats: int = 3) -> float:
        """Best of `repeats` timed calls after one warm-up call."""
        fn()
        best = float("inf")
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - start)
        return best

    return seconds


def build_model(name: str, device: torch.device, dtype: torch.dtype):
    import transformers

    from interp.models.loading import LoadedModel, describe
    from interp.models.sources import byte_tokenizer, tiny_model

    if name.startswith("tiny-"):
        hf, tokenizer = tiny_model(name.removeprefix("tiny-"), dtype=dtype)
    else:
        config_class, fields = CONFIGS[name]
        config = getattr(transformers, config_class)(**fields)
        if config_class == "Gemma2Config":
            config.layer_types = ["sliding_attention", "full_attention"] * (config.num_hidden_layers // 2)
        with torch.device(device):
            hf = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        tokenizer = byte_tokenizer()
    hf = hf.to(device).eval()
    return LoadedModel(hf, tokenizer, describe(hf, name))


def truncated_body(model, last_layer: int):
    """The model's body without unembedding, blocks 0..last_layer, final norm replaced by the identity (a copy of
    the module tree sharing the weights)."""
    import copy

    from interp.models.sites import FAMILIES, get_module

    spec = FAMILIES[model.info.family]
    base_path, blocks_name = spec.blocks.rsplit(".", 1)
    base = copy.copy(get_module(model.hf, base_path))
    base._modules = dict(base._modules)
    base._modules[blocks_name] = torch.nn.ModuleList(list(getattr(base, blocks_name))[: last_layer + 1])
    base._modules[spec.final_norm.rsplit(".", 1)[1]] = torch.nn.Identity()
    return base


def bench_capture(name: str, preset: dict, device: torch.device, dtype: torch.dtype, seconds) -> None:
    from interp.capture import capture
    from interp.corpus import Contexts

    model = build_model(name, device, dtype)
    n, length, batch = preset["n_contexts"], preset["context_len"], preset["batch"]
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, model.info.vocab_size, (n, length), generator=gen)  # random ids: speed only
    positions = torch.arange(length).expand(n, -1).contiguous()
    contexts = Contexts(tokens, torch.arange(n)[:, None].expand(n, length).contiguous(), positions,
                        torch.full((n,), length), True, {"corpus": "random", "context_len": length})  # fmt: skip
    layers = model.info.n_layers
    middle = layers // 2
    cases = {"middle layer, 2 sites": (f"{middle}.mlp_hidden,{middle}.resid_post", middle),
             "resid_post of every layer": (",".join(f"{i}.resid_post" for i in range(layers)), layers - 1)}  # fmt: skip
    print(
        f"\n{name} ({layers} layers, d {model.info.d_model}), {n} x {length} tokens, batch {batch}, {dtype}"
    )
    for label, (sites, last) in cases.items():
        body = truncated_body(model, last)

        def floor(body=body):
            with torch.no_grad():
                for start in range(0, n, batch):
                    body(input_ids=tokens[start : start + batch].to(device), use_cache=False)

        t_floor = seconds(floor, 2)
        for backend in ("torch", "nnsight"):

            def run(backend=backend, sites=sites):
                with tempfile.TemporaryDirectory() as out:
                    capture(model, contexts, sites, out, backend=backend, batch_size=batch, progress=False)

            t = seconds(run, 2)  # timed as the floor is: best of 2 after a warm-up
            print(
                f"  capture {backend:<8} {label:<28} {n * length / t:>12,.0f} tok/s   {t_floor / t:.2f}x the floor"
            )


def bench_sae(preset: dict, device: torch.device, seconds) -> None:
    from interp.decompose.mp_sae import MPSAE, MPSAEConfig
    from interp.decompose.sae import SAE, SAEConfig

    d_in, n_latents, k, batch = preset["sae"]
    x = torch.randn(batch, d_in, device=device)
    w = torch.randn(d_in, n_latents, device=device)
    autocast = device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        t_matmul = seconds(lambda: x @ w, 5)
    print(f"\nSAE family: d_in {d_in}, {n_latents} latents, k {k}, batch {batch} (one encoder matmul "
          f"{t_matmul * 1e3:.2f} ms{', bf16 autocast' if autocast else ''})")  # fmt: skip
    common = {
        "n_features": n_latents,
        "k": k,
        "batch_size": batch,
        "device": str(device),
        "dead_tokens": 10 * batch,
    }
    steps = {}
    for label, decomposer in (("TopK", SAE(SAEConfig(architecture="topk", **common))),
                              ("BatchTopK", SAE(SAEConfig(architecture="batchtopk", **common))),
                              ("MP-SAE", MPSAE(MPSAEConfig(**common)))):  # fmt: skip
        module = decomposer.build(d_in).to(device)
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
        dead = torch.zeros(n_latents, dtype=torch.bool, device=device)

        def step(module=module, optimizer=optimizer, dead=dead, label=label):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast and label != "MP-SAE"):
                loss, _ = module.training_loss(x, dead, 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            module.remove_parallel_gradient()
            optimizer.step()
            module.normalize_decoder()

        steps[label] = seconds(step)
        print(f"  {label:<10} step {steps[label] * 1e3:8.2f} ms  {batch / steps[label]:>12,.0f} rows/s  "
              f"{steps[label] / t_matmul:6.1f}x one encoder matmul")  # fmt: skip
    print(f"  MP-SAE step / TopK step: {steps['MP-SAE'] / steps['TopK']:.2f}x")


def bench_snmf(preset: dict, device: torch.device, seconds) -> None:
    from interp.decompose.snmf import SNMF, SNMFConfig

    n, d, k = preset["snmf"]
    x = torch.randn(n, d, device=device).relu()
    t_product = seconds(lambda: x @ torch.randn(d, k, device=device), 3)
    snmf = SNMF(SNMFConfig(n_features=k, max_iter=5, patience=5, device=str(device)))
    start = time.perf_counter()
    snmf.fit(x, progress=False)
    total = time.perf_counter() - start
    per_iter = snmf.state.seconds / snmf.state.iteration
    print(
        f"\nSNMF: {n:,} rows x d {d}, k {k}: {per_iter:.3f} s/iteration ({n / per_iter:,.0f} rows/s), "
        f"{per_iter / t_product:.1f}x one A x [d, k] product; setup {total - snmf.state.seconds:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=list(PRESETS), default=None, help="full on CUDA, tiny elsewhere")
    parser.add_argument("--only", default="capture,sae,snmf", help="which parts, comma-separated")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = PRESETS[args.preset or ("full" if device.type == "cuda" else "tiny")]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    seconds = timer(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; preset {args.preset or 'auto'}")
    parts = set(args.only.split(","))
    if "capture" in parts:
        for model in preset["models"]:
            bench_capture(model, preset, device, dtype, seconds)
    if "sae" in parts:
        bench_sae(preset, device, seconds)
    if "snmf" in parts:
        bench_snmf(preset, device, seconds)


if __name__ == "__main__":
    main()
