"""`lift_ext.optim.SGLD(preconditioned=True)` on a peft LoRA ViT (timm): does sampling at
temperature 1 keep the accuracy of temperature 0?

Setting (everything offline): sklearn's 8x8 digits upsampled to 16x16; a timm ViT (patch 4,
width 64, depth 4) pre-trained in-house on the digits 0-4 (the upstream set); downstream task:
the digits 5-9, split in half into train and test images; LoRA (r = 4) on the attention's qkv
projections and the classification head in the adapter (peft `modules_to_save`). Every run
takes the same number of steps on minibatches of a MEAN loss (`num_data` = the training
images), from the same pre-trained backbone:

* `psgld_t0`, `psgld_t1`: `optim.SGLD(preconditioned=True, num_data=N)` with the prior the
  README recommends for LoRA (centred on the initialisation, precision 1 / std(A_init)^2), at
  temperature 0 and 1;
* `psgld_t1_averaged`: the `psgld_t1` chain, its predictions averaged over the samples of its
  second half, every 10th step (`lift_ext.optim.PosteriorSamples`): the Bayesian model average;
* `kernel_rule_t1`: that temperature-1 chain through `lift_ext.sgld_step` with a square
  average of zeros kept by hand, i.e. the kernel's own rule for weights without a gradient
  (G = 1 / eps'), `optim.SGLD`'s behaviour before lift_ext.preconditioner;
* `defaults_t1`: `optim.SGLD(preconditioned=True)` with its defaults (no prior, temperature 1,
  the mean loss read as summed: no num_data), and `kernel_rule_defaults_t1` the same through
  the kernel's rule: a user's first try, before and after;
* `adamw`: torch.optim.AdamW at the same lr, the non-Bayesian reference.

Prints a table (test accuracy, mean and standard error over seeds, and each method minus
`psgld_t0` paired by seed) and writes it with the raw numbers as JSON (--out).
Usage: python benchmarks/lora_vit_sgld.py [--seeds 5] [--steps 300] [--quick] [--out FILE]
"""
import argparse
import json
import math
import platform
import time

import torch

import lift_ext
from lift_ext.optim import SGLD, PosteriorSamples

try:
    import timm
    from peft import LoraConfig, get_peft_model
    from sklearn.datasets import load_digits
except ImportError as missing:  # pragma: no cover - the script's own dependency message
    raise SystemExit(f"this benchmark needs timm, peft and scikit-learn: {missing}")

# method -> (temperature, guided prior?, num_data given?, the kernel's rule by hand?); adamw apart
CHAINS = {"psgld_t0": (0.0, True, True, False), "psgld_t1": (1.0, True, True, False),
          "psgld_t1_averaged": (1.0, True, True, False),
          "kernel_rule_t1": (1.0, True, True, True), "defaults_t1": (1.0, False, False, False),
          "kernel_rule_defaults_t1": (1.0, False, False, True)}
METHODS = tuple(CHAINS) + ("adamw",)


def digits():
    """(images [n, 1, 16, 16] float32 standardised, labels [n] int64)."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(images, size=16, mode="bilinear", align_corners=False)
    return (images - images.mean()) / images.std(), torch.tensor(data.target)


def vit(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, in_chans=1,
                             num_classes=10, embed_dim=64, depth=4, num_heads=4)


def pretrain(model, images, labels, steps: int, seed: int) -> None:
    """Full training of the backbone on the upstream digits (AdamW, minibatches of 64)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    for _ in range(steps):
        index = torch.randint(len(images), (64,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(images[index]), labels[index]).backward()
        opt.step()


def lora(backbone_state, seed: int):
    model = vit(seed)
    model.load_state_dict(backbone_state)
    torch.manual_seed(seed + 1)  # LoRA A's random initialisation
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"], modules_to_save=["head"]))


def accuracy(model, images, labels, samples=None) -> float:
    """Test accuracy (%) of the model, or of its predictions averaged over `samples`."""
    model.eval()
    with torch.no_grad():
        if samples is None:
            predicted = model(images).argmax(1)
        else:
            predicted = samples.average(lambda m: torch.softmax(m(images), -1)).argmax(1)
    model.train()
    return 100.0 * float((predicted == labels).float().mean())


def guided_prior(params):
    """The README's LoRA prior: precision 1 / std(LoRA A at its initialisation)^2."""
    a_init = torch.cat([p.detach().reshape(-1) for name, p in params if "lora_A" in name])
    return 1.0 / float(a_init.std()) ** 2


def train(method: str, model, images, labels, steps: int, lr: float, seed: int):
    """Run `method` for `steps` steps; returns its PosteriorSamples (averaged methods) or None."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    n = len(images)
    opt = step_by_hand = None
    if method == "adamw":
        opt = torch.optim.AdamW(params, lr=lr)
    else:
        temperature, guided, per_example, by_hand = CHAINS[method]
        prior = dict(prior_precision=guided_prior(named) if guided else 0.0, num_data=n if per_example else 1)
        if by_hand:  # the kernel's rule: square averages of zeros, nothing else
            centres = [p.detach().clone() for p in params] if guided else None
            averages = [torch.zeros_like(p) for p in params]

            def step_by_hand(offset):
                lift_ext.sgld_step(params, [p.grad for p in params], lr=lr, temperature=temperature,
                                   prior_mean=centres, square_avg=averages, seed=seed, offset=offset, **prior)
        else:
            opt = SGLD(params, lr=lr, temperature=temperature, preconditioned=True, seed=seed,
                       prior_mean="init" if guided else "zero", **prior)
    kept = PosteriorSamples(model, burn_in=steps // 2, thin=10) if method.endswith("_averaged") else None
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = torch.randint(n, (64,), generator=gen)
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(images[index]), labels[index]).backward()
        if opt is not None:
            opt.step()
        else:
            with torch.no_grad():
                step_by_hand(step)
        if kept is not None:
            kept.collect()
    return kept


def run(seeds: int, steps: int, pretrain_steps: int, lr: float):
    images, labels = digits()
    upstream = labels < 5
    down_images, down_labels = images[~upstream], labels[~upstream]
    results = {m: [] for m in METHODS}
    backbone_accuracy = []
    for seed in range(seeds):
        order = torch.randperm(len(down_images), generator=torch.Generator().manual_seed(100 + seed))
        half = len(order) // 2
        train_idx, test_idx = order[:half], order[half:]
        backbone = vit(seed)
        pretrain(backbone, images[upstream], labels[upstream], pretrain_steps, seed)
        state = backbone.state_dict()
        backbone_accuracy.append(accuracy(backbone, down_images[test_idx], down_labels[test_idx]))
        for method in METHODS:
            model = lora(state, seed)
            kept = train(method, model, down_images[train_idx], down_labels[train_idx], steps, lr, seed)
            results[method].append(accuracy(model, down_images[test_idx], down_labels[test_idx], kept))
        print(f"seed {seed}: " + ", ".join(f"{m} {results[m][-1]:.1f}" for m in METHODS), flush=True)
    return results, backbone_accuracy, int(len(down_images) // 2)


def mean_se(values):
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def table(results, reference="psgld_t0") -> str:
    lines = ["| method | test accuracy (%) | minus psgld_t0, paired (pp) |", "|---|---:|---:|"]
    for method, values in results.items():
        mean, se = mean_se(values)
        diff = [v - r for v, r in zip(values, results[reference])]
        d_mean, d_se = mean_se(diff)
        paired = "" if method == reference else f"{d_mean:+.2f} ± {d_se:.2f}"
        lines.append(f"| `{method}` | {mean:.2f} ± {se:.2f} | {paired} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 steps, 50 pre-training steps (a smoke run)")
    parser.add_argument("--out", default=None, help="write the table and raw numbers as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.pretrain_steps = 1, 20, 50
    torch.set_num_threads(args.threads)
    started = time.process_time()
    results, backbone, num_train = run(args.seeds, args.steps, args.pretrain_steps, args.lr)
    text = table(results)
    summary = (f"{args.seeds} seed(s), {args.steps} steps of minibatch 64 at lr {args.lr:g}, {num_train} training "
               f"images; backbone unadapted: {mean_se(backbone)[0]:.2f} %; CPU time "
               f"{time.process_time() - started:.0f} s on {platform.processor() or platform.machine()}, "
               f"{args.threads} thread(s), torch {torch.__version__}")
    print(text)
    print(summary)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"table": text, "summary": summary, "accuracy": results, "backbone": backbone,
                       "args": vars(args)}, fh, indent=1)


if __name__ == "__main__":
    main()
