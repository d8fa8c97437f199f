"""Few labels: M2 against the same classifier trained on the labels alone.

    python benchmarks/few_labels.py --limit 5000 --epochs 10 --labels 100
    python benchmarks/few_labels.py --preset mnist-m1m2 --set data.m1_run=RUN_DIR ...

Trains M2 (the --preset's networks, mnist-m2 unless given, with --set overrides; for
mnist-m1m2, on the codes of the M1 run named by data.m1_run) on --limit MNIST training
images of which --labels carry labels; then, in the same process, the same classifier
network q(y|x) from the same initial weights on the labelled images alone (cross-entropy,
Adam with the same learning rate and weight decay, as many steps as M2 took, on the training
transform's draws: with data.transform=scale (mnist-m2) the grey images themselves, with
binarize-dynamic fresh binarizations, with mnist-m1m2 M1's posterior draws). Both are scored
on the first --test-images test images, beside logistic regression on the labelled images'
raw pixels (in [0, 1], scikit-learn's defaults). Test errors in %. Any dataset:
--set data.name=folder:PATH (e.g. the grey variants of scripts/grey_variants.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, data_dir, machine, report  # noqa: E402

from vaelab.families import build_model  # noqa: E402
from vaelab.prepared_data import load_images, prepare_data  # noqa: E402
from vaelab.presets import load_preset  # noqa: E402
from vaelab.rundir.load import load_run  # noqa: E402
from vaelab.training.trainer import train  # noqa: E402


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist-m2")
    parser.add_argument("--limit", type=int, default=5000)
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="few-labels-run")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or 1)
    config = load_preset(args.preset)
    config.apply_overrides([f"data.limit={args.limit}", f"data.labelled={args.labels}", f"train.epochs={args.epochs}",
                            f"train.lr={args.lr}", f"train.threads={args.threads or 1}"] + args.set)
    config.data.data_dir = data_dir(args.data_dir)
    config.validate()

    start = time.perf_counter()
    run = load_run(train(config, args.out, overwrite=True, progress=False, callbacks=[]))
    m2_seconds = time.perf_counter() - start
    images, labels = run.images("test")
    images, labels = images[:args.test_images], labels[:args.test_images]
    m2_error = run.evaluate("test", iw_samples=0, limit=args.test_images)["class_error"]

    # the same classifier network, from M2's initial weights, on the labelled images alone
    data = prepare_data(config.data, seed=config.train.seed, transform=run.transform)  # M1's codes too
    torch.manual_seed(config.train.seed)
    alone = build_model(config.model, data.event_shape)
    params = list(alone.classifier.parameters()) + list(alone.classifier_head.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr, weight_decay=config.train.weight_decay)
    x_l, y_l = data.train[data.labelled], data.train_labels[data.labelled]
    steps = args.epochs * -(-(len(data.train) - args.labels) // config.train.batch_size)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.nll_loss(alone.classify(data.transform(x_l, generator=generator)), y_l)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    alone_seconds = time.perf_counter() - start
    alone.eval()  # dropout off, as M2's evaluation has it
    with torch.no_grad():
        predicted = alone.classify(run.transform.fixed(images)).argmax(-1)
    alone_error = float((predicted != labels).float().mean())
    pixels_error = pixel_logreg_error(config, data.labelled_rows, images, labels)
    result = {"machine": machine(), "preset": args.preset, "limit": args.limit, "labels": args.labels, "epochs": args.epochs,
              "lr": args.lr, "set": args.set, "steps": steps, "test_images": len(images),
              "m2_error_pct": 100 * m2_error, "m2_seconds": m2_seconds,
              "classifier_alone_error_pct": 100 * alone_error, "classifier_alone_seconds": alone_seconds,
              "pixel_logreg_error_pct": 100 * pixels_error}
    report(result, args.json)


def pixel_logreg_error(config, rows, test_images, test_labels) -> float:
    """Logistic regression on the labelled training images' raw pixels, scored on the test images."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    train_images, train_labels = load_images(config.data, config.data.train_split)
    x = np.asarray(train_images[rows], dtype=np.float64).reshape(len(rows), -1) / 255
    fit = LogisticRegression(max_iter=5000).fit(x, np.asarray(train_labels)[rows])
    x_test = np.asarray(test_images, dtype=np.float64).reshape(len(test_images), -1) / 255
    return float(np.mean(fit.predict(x_test) != np.asarray(test_labels)))


if __name__ == "__main__":
    main()
