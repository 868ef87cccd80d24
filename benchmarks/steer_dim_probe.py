"""Does a difference-in-means direction write on-topic text on Gemma 3 270M, at KL targets above the paper's?

For each concept: the DiM direction of mean-pooled `L.mlp_hidden` activations (BBC train texts), mapped past the
post-MLP norm to `L.mlp_out` (the paper's placement), calibrated to each KL target on the neutral prompts, then
sampled; prints the offline classifier's on-topic rate (and the unsteered text's, the classifier's floor) (chance = 1 / the number of BBC concepts) and the first
samples, so a reader can judge the text, not only the classifier.

    OMP_NUM_THREADS=1 python benchmarks/steer_dim_probe.py --layer 9 --kl-targets 0.5,1,2,4
"""

from __future__ import annotations

import argparse

import torch

from interp.models.loading import load_model
from interp.models.sites import parse_site
from interp.steer.calibration import (
    NEUTRAL_PROMPTS,
    Prompts,
    Sampling,
    alpha_for_kl,
    kl_function,
    steered_samples,
)
from interp.steer.concepts import load_concepts
from interp.steer.detection import diff_in_means, text_activations
from interp.steer.judges import ConceptClassifier, on_topic
from interp.steer.placement import place


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--concepts", default="sport,politics,tech", help="comma-separated BBC concepts")
    parser.add_argument("--kl-targets", default="0.5,1,2,4", help="comma-separated KL targets (nats)")
    parser.add_argument("--n-samples", type=int, default=2, help="samples per neutral prompt")
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--show", type=int, default=4, help="samples printed per cell")
    args = parser.parse_args()

    model = load_model(args.model)
    concepts = load_concepts("bbc", per_concept=20, seed=0)
    site = parse_site(f"{args.layer}.mlp_hidden")
    acts = text_activations(model, concepts.texts, site, 48)
    train = torch.tensor(concepts.train)
    train_texts = [concepts.texts[i] for i in concepts.train]
    classifier = ConceptClassifier.fit(train_texts, [concepts.concepts[i] for i in concepts.train])
    scale = float(acts.acts[acts.mask].norm(dim=-1).mean())
    prompts = Prompts.build(model, NEUTRAL_PROMPTS)
    sampling = Sampling(n_samples=args.n_samples, max_new_tokens=args.max_new_tokens)
    print(
        f"{args.model}, DiM of {site.name} placed at mlp_out; chance on-topic = 1/{len(set(concepts.concepts))}"
    )
    unsteered, _ = steered_samples(model, prompts, site, None, 0.0, sampling)
    for concept in args.concepts.split(","):
        rate = on_topic(classifier, unsteered, concept).mean().item()
        print(f"== {concept} unsteered: on-topic {rate:.2f}")
    for concept in args.concepts.split(","):
        positive = torch.tensor([c == concept for c in concepts.concepts])
        out_site, direction = place(
            model, site, "mlp_out", diff_in_means(acts.mean_pool()[train], positive[train])
        )
        kl_of = kl_function(model, prompts, out_site, direction)
        for target in (float(t) for t in args.kl_targets.split(",")):
            cal = alpha_for_kl(kl_of, target, start=scale / 8, max_doublings=14)
            texts, ppl = steered_samples(model, prompts, out_site, direction, cal.alpha, sampling)
            rate = on_topic(classifier, texts, concept).mean().item()
            print(f"== {concept} KL target {target}: reached {cal.reached} (KL {cal.kl:.3f}, strength {cal.alpha:.0f})"
                  f" on-topic {rate:.2f} median ppl {ppl.median():.1f}", flush=True)  # fmt: skip
            for text in texts[: args.show]:
                print("   ", repr(text[:150]))


if __name__ == "__main__":
    main()
