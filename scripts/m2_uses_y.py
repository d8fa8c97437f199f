"""How far a trained M2 conditions on its class: the generative classifier argmax_y L(x, y)
against q(y|x), on a random sample of the run's test images.

    python scripts/m2_uses_y.py RUN_DIR [RUN_DIR ...] [--images 600]

L(x, y) is the labelled bound (five posterior samples averaged); a decoder that ignores y
gives every class about the same L and the generative classifier errs at about chance.
"""

from __future__ import annotations

import argparse

import torch

from vaelab.rundir.load import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--images", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for path in args.runs:
        run = load_run(path)
        model = run.model.eval()
        images, labels = run.images("test")
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:args.images]
        x, y = run.transform.fixed(images[pick]), torch.as_tensor(labels)[pick]
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            h = model.encoder(x)
            bounds = torch.stack([
                torch.stack([model._labelled(x, h, torch.full((len(x),), c),
                                             torch.randn(len(x), model.latent_dim, generator=generator))[0]
                             for _ in range(5)]).mean(0)
                for c in range(model.n_classes)], -1)
            generative = float((bounds.argmax(-1) != y).float().mean())
            classifier = float((model.classify(x).argmax(-1) != y).float().mean())
        print(f"{path}: generative classifier error {100 * generative:.1f} %, q(y|x) error {100 * classifier:.1f} % "
              f"({len(x)} test images)")


if __name__ == "__main__":
    main()
