"""Training images/s: vaelab's Trainer against hand-written PyTorch loops of the same model.

    python benchmarks/train_throughput.py                       # mnist-mlp and mlp-512, batch 128 and 1024
    python benchmarks/train_throughput.py --models conv --batch-sizes 128

vaelab trains through its public entry point (``vaelab.train`` with a config) and reports
images/s per epoch in metrics.jsonl (training steps only, validation excluded). After each
vaelab epoch a callback runs one epoch of each reference loop on the same uint8 tensor, so
the two are measured interleaved, in one process, under the same machine load:

- minimal: the loop most people write first. Data as one uint8 tensor, x = bernoulli(u/255)
  per batch, the same layers, BCE-with-logits summed over pixels + analytic KL, default
  torch.optim.Adam, torch's default denormal handling.
- tuned: the same loop plus torch.set_flush_denormal(True) and Adam(fused=True), the two
  settings that matter on CPU (see BENCHMARKS.md).
- dataloader (--dataloader): the minimal loop fed by torch.utils.data.DataLoader over a
  TensorDataset, shuffle=True.

Reported per (model, batch): median images/s over the epochs after the first (warm-up),
the ratio vaelab / reference, the model's matmul/conv FLOPs per image (counted with
torch.utils.flop_counter on one training step), and the fraction of the machine's own
matrix-multiply rate (2048x2048 fp32 GEMM, measured after every epoch in the same run).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, data_dir, machine, matmul_flops, median, table  # noqa: E402

from vaelab.presets import load_preset  # noqa: E402

#: model name -> (preset, --set overrides); "mlp-512" is the 784-512-512-32 ReLU anchor model (the minimal loop and pythae)
MODELS = {
    "mnist-mlp": ("mnist-mlp", []),
    # the same network and step, its loss through torch.compile (train.compile)
    "mnist-mlp-compiled": ("mnist-mlp", ["train.compile=true"]),
    "mlp-512": ("mnist-mlp", ["model.hidden=512,512", "model.latent_dim=32", "model.activation=relu"]),
    # the same network trained by preset mnist-fast: bf16 autocast (the references stay fp32)
    "mnist-fast": ("mnist-fast", []),
    "conv": ("mnist-mlp", ["model.encoder=conv", "model.decoder=conv", "model.latent_dim=32",
                           "model.activation=relu", "model.conv_channels=32,64", "model.conv_kernels=4,4",
                           "model.conv_strides=2,2", "model.conv_dense=256"]),
}


def build_reference(config, event_shape):
    """The same network, written by hand for the MLP (the conv layers come from vaelab.nn)."""
    m = config.model
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[m.activation]
    d = math.prod(event_shape)
    if m.encoder == "mlp":
        enc, width = [nn.Flatten()], d
        for h in m.hidden:
            enc += [nn.Linear(width, h), act()]
            width = h
        dec, w = [], m.latent_dim
        for h in reversed(m.hidden):
            dec += [nn.Linear(w, h), act()]
            w = h
        dec += [nn.Linear(w, d)]
        return nn.Sequential(*enc), nn.Linear(width, 2 * m.latent_dim), nn.Sequential(*dec)
    from vaelab.nn import ConvDecoder, ConvEncoder, ConvStack

    stack = ConvStack(m.conv_channels, m.conv_kernels, m.conv_strides, m.conv_dense, m.activation)
    enc = ConvEncoder(event_shape, stack)
    dec = ConvDecoder(m.latent_dim, event_shape, 1, stack)
    return enc, nn.Linear(enc.out_features, 2 * m.latent_dim), nn.Sequential(dec, nn.Flatten())


class ReferenceLoop:
    """One hand-written training loop; ``epoch()`` runs one pass and returns images/s."""

    def __init__(self, name, config, images, batch, tuned=False, dataloader=False, seed=1):
        self.name, self.images, self.batch = name, images, batch
        self.tuned, self.dataloader = tuned, dataloader
        self.gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():  # leave the global RNG (vaelab's) untouched
            torch.manual_seed(seed)
            self.enc, self.head, self.dec = build_reference(config, tuple(images.shape[1:]))
        params = [p for mod in (self.enc, self.head, self.dec) for p in mod.parameters()]
        self.params = params
        self.opt = torch.optim.Adam(params, lr=1e-3, fused=True) if tuned else torch.optim.Adam(params, lr=1e-3)
        self.rates: list[float] = []  # images per wall second
        self.cpu_rates: list[float] = []  # images per CPU second of this process

    def step_loss(self, u8):
        x = torch.bernoulli(u8.float() / 255.0, generator=self.gen)
        mu, logvar = self.head(self.enc(x)).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=self.gen)
        logits = self.dec(z)
        b = x.shape[0]
        recon = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="sum") / b
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / b
        return recon + kl

    def _batches(self):
        n, b = len(self.images), self.batch
        if self.dataloader:
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.images), batch_size=b,
                                                 shuffle=True, generator=self.gen)
            for (u8,) in loader:
                if len(u8) > 1:
                    yield u8
            return
        perm = torch.randperm(n, generator=self.gen)
        for start in range(0, n, b):
            idx = perm[start:start + b]
            if len(idx) > 1:
                yield self.images[idx]

    def epoch(self) -> float:
        previous = torch.is_flush_denormal_enabled() if hasattr(torch, "is_flush_denormal_enabled") else None
        torch.set_flush_denormal(self.tuned)
        seen, total = 0, torch.zeros(())
        start, cpu = time.perf_counter(), time.process_time()
        for u8 in self._batches():
            loss = self.step_loss(u8)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.detach()
            seen += len(u8)
        rate = seen / (time.perf_counter() - start)
        self.cpu_rates.append(seen / (time.process_time() - cpu))
        torch.set_flush_denormal(True if previous is None else previous)
        self.rates.append(rate)
        return rate

    def denormal_state(self) -> tuple[int, int]:
        """(denormal values, all values) in Adam's running averages: a suspected slowdown source."""
        tiny = torch.finfo(torch.float32).tiny
        values = [s[k] for s in self.opt.state.values() for k in ("exp_avg", "exp_avg_sq")]
        return (sum(int(((v != 0) & (v.abs() < tiny)).sum()) for v in values), sum(v.numel() for v in values))

    def flops_per_image(self) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        u8 = self.images[:self.batch]
        counter = FlopCounterMode(display=False)
        with counter:
            self.step_loss(u8).backward()
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops() / len(u8)


class Interleave:
    """Trainer callback: after each vaelab epoch, one epoch of every reference, and a GEMM."""

    def __init__(self, config, refs: list[str]):
        self.config, self.ref_names = config, refs
        self.refs: list[ReferenceLoop] = []
        self.peaks: list[float] = []
        self.cpu_rates: list[float] = []  # vaelab's training epochs, images per CPU second

    def on_train_start(self, trainer):
        # vaelab's own images/s come from metrics.jsonl; CPU time is taken around the same call
        epoch = trainer._train_epoch

        def timed_epoch():
            cpu = time.process_time()
            row = epoch()
            if row is not None:
                self.cpu_rates.append(row["_images"] / (time.process_time() - cpu))
            return row

        trainer._train_epoch = timed_epoch
        images, b = trainer.train_images.cpu(), self.config.train.batch_size
        for name in self.ref_names:
            self.refs.append(ReferenceLoop(name, self.config, images, b, tuned=name == "tuned",
                                           dataloader=name == "dataloader"))

    def on_epoch_end(self, trainer, row):
        for ref in self.refs:
            ref.epoch()
        self.peaks.append(matmul_flops())  # (per wall second, per CPU second)


def measure(model: str, batch: int, epochs: int, refs: list[str], data: str | None, channels_last: str | None,
            limit: int = 0):
    preset, overrides = MODELS[model]
    config = load_preset(preset)
    config.apply_overrides(overrides + [f"train.batch_size={batch}", f"train.epochs={epochs}",
                                        "train.checkpoint_every=1000", "train.keep_checkpoints=1",
                                        f"data.limit={limit}"])
    if channels_last is not None:
        config.set("train.channels_last", channels_last)
    if data:
        config.data.data_dir = data
    config.validate()
    probe = Interleave(config, refs)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        from vaelab.training.trainer import train

        train(config, out, progress=False, callbacks=[probe])
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    vaelab_rates = [r["images_per_s"] for r in rows]
    for ref in probe.refs:
        denormal, total = ref.denormal_state()
        print(f"  {ref.name} loop after {epochs} epochs: {denormal:,} of {total:,} Adam state values are denormal",
              flush=True)
    flops = probe.refs[0].flops_per_image() if probe.refs else float("nan")
    return (vaelab_rates, {r.name: r.rates for r in probe.refs}, flops, probe.peaks,
            probe.cpu_rates, {r.name: r.cpu_rates for r in probe.refs})


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist-mlp,mlp-512", help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--batch-sizes", default="128,1024")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is warm-up")
    parser.add_argument("--dataloader", action="store_true", help="also time a DataLoader-fed loop")
    parser.add_argument("--no-tuned", action="store_true", help="skip the tuned reference loop")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default=None,
                        help="conv: vaelab's train.channels_last (default: the config's)")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N MNIST images only (0: all)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    refs = ["minimal"] + ([] if args.no_tuned else ["tuned"]) + (["dataloader"] if args.dataloader else [])
    print(machine())
    results, rows = [], []
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            v, ref_rates, flops, peaks, v_cpu, ref_cpu = measure(model, batch, args.epochs, refs,
                                                                 data_dir(args.data_dir), args.channels_last,
                                                                 args.limit)
            mv = median(v[1:] or v)
            mv_cpu = median(v_cpu[1:] or v_cpu)
            peak_cpu = median([p[1] for p in peaks[1:] or peaks])
            row = [model, batch, mv, mv_cpu]
            result = {"model": model, "batch": batch, "vaelab_images_per_s": v, "references": ref_rates,
                      "vaelab_images_per_cpu_s": v_cpu, "references_per_cpu_s": ref_cpu,
                      "flops_per_image": flops, "matmul_flops_per_s": peaks}
            for name in refs:
                mr = median(ref_rates[name][1:] or ref_rates[name])
                ratio_cpu = median(v_cpu[1:] or v_cpu) / median(ref_cpu[name][1:] or ref_cpu[name])
                row += [mr, mv / mr, ratio_cpu]
            # both rates per CPU second of this process, so other jobs' load cancels
            fraction = mv_cpu * flops / peak_cpu
            row += [flops / 1e6, peak_cpu / 1e9, fraction]
            result["fraction_of_matmul_peak"] = fraction
            results.append(result)
            rows.append(row)
            print(f"  {model} batch {batch}: vaelab {[round(x) for x in v]} img/s; "
                  + "; ".join(f"{k} {[round(x) for x in r]}" for k, r in ref_rates.items()), flush=True)
    header = ["model", "batch", "vaelab img/s", "vaelab img/CPU-s"]
    for name in refs:
        header += [f"{name} img/s", f"vaelab / {name}", "same, CPU time"]
    header += ["MFLOP/image", "GEMM GFLOP/CPU-s", "fraction of GEMM rate"]
    print(f"\nmedian of epochs 2..{args.epochs} (epoch 1 is warm-up); one process, interleaved per epoch; "
          f"img/s per wall second, img/CPU-s per CPU second of the process; the GEMM rate is a "
          f"2048x2048 fp32 matmul's, per CPU second")
    print(table(header, rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
