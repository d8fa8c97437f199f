"""The fast paths change speed, not results: channels_last, the NaN guard checked every N
steps (the CUDA path, run here on CPU), bf16 autocast and torch.compile."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from vaelab.config import Config
from vaelab.training.trainer import train

TINY = ["data.name=mnist-sample", "data.limit=300", "model.hidden=32", "model.latent_dim=4",
        "train.batch_size=32", "train.device=cpu", "train.threads=1", "train.epochs=2",
        "train.log_latent_stats=false"]
CONV = ["model.encoder=conv", "model.decoder=conv", "model.conv_channels=8,16", "model.conv_kernels=4,4",
        "model.conv_strides=2,2", "model.conv_dense=32"]


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_globals():
    """Training sets process-wide torch state (threads, denormal flushing): give it back."""
    threads = torch.get_num_threads()
    flushing = torch.tensor([1e-40]).mul(1.0).item() == 0.0
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(flushing)


def _train(tmp_path, name, *settings, callbacks=None):
    config = Config()
    config.apply_overrides(TINY + list(settings))
    out = train(config.validate(), tmp_path / name, progress=False, callbacks=callbacks)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows, load_file(str(out / "model.safetensors"))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


class _Probe:
    """Records what the trainer set up: the layout of the first conv weight, activation dtypes."""

    def __init__(self):
        self.channels_last = None
        self.dtypes = set()

    def on_train_start(self, trainer):
        # a conv with several input channels (with one, both layouts are the same memory)
        convs = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
        if convs:
            weight = convs[0].weight
            self.channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        first = next(m for m in trainer.model.encoder.modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_hook(lambda mod, inp, out: self.dtypes.add(out.dtype))


def test_channels_last_conv_trains_to_the_same_numbers(tmp_path):
    on, off = _Probe(), _Probe()
    rows_on, w_on = _train(tmp_path, "on", *CONV, "train.channels_last=on", callbacks=[on])
    rows_off, w_off = _train(tmp_path, "off", *CONV, "train.channels_last=off", callbacks=[off])
    assert on.channels_last is True and off.channels_last is False  # the layouts really differ
    for a, b in zip(rows_on, rows_off):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_elbo"] == pytest.approx(b["val_elbo"], rel=1e-5)
    assert _max_diff(w_on, w_off) < 1e-4
    assert all(w.is_contiguous() for w in w_on.values())  # checkpoints hold plain tensors


def test_channels_last_auto_means_on_for_conv_and_off_for_mlp(tmp_path):
    conv, mlp = _Probe(), _Probe()
    _train(tmp_path, "conv", *CONV, "train.epochs=1", callbacks=[conv])
    _train(tmp_path, "mlp", "train.epochs=1", callbacks=[mlp])
    assert conv.channels_last is True
    assert mlp.channels_last is None  # no conv layers to lay out


def test_nan_guard_checked_every_n_steps_matches_every_step(tmp_path):
    # a real trigger (as in test_nan_guard): lr = 1 on a learned log-variance makes the loss
    # overflow after the first step; the skip policy drops every such batch
    trigger = ["data.transform=scale", "model.likelihood=gaussian", "model.variance=learned-logvar",
               "train.lr=1", "train.nan_policy=skip"]
    rows_1, w_1 = _train(tmp_path, "every-step", *trigger, "train.nan_check_every=1")
    rows_4, w_4 = _train(tmp_path, "every-4", *trigger, "train.nan_check_every=4")
    assert 0 < rows_1[0]["skipped_steps"] < 9  # good and skipped steps: the comparison means something
    for a, b in zip(rows_1, rows_4):
        for key in ("skipped_steps", "nan_events"):
            assert a[key] == b[key], key
        for key in ("train_loss", "grad_norm_max", "val_elbo"):
            assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], rel=1e-6), key
    assert _max_diff(w_1, w_4) == 0.0  # the skipped steps left no trace in either


def test_deferred_nan_check_still_raises(tmp_path):
    from vaelab.training.nan_guard import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="of the last 4 steps"):
        _train(tmp_path, "raise", "data.transform=scale", "model.likelihood=gaussian",
               "model.variance=learned-logvar", "train.lr=1", "train.nan_check_every=4")


def test_bf16_autocast_runs_the_networks_in_bf16_and_keeps_fp32_numbers(tmp_path):
    probe_bf16, probe_fp32 = _Probe(), _Probe()
    rows_bf16, w_bf16 = _train(tmp_path, "bf16", "train.autocast=bf16", callbacks=[probe_bf16])
    rows_fp32, w_fp32 = _train(tmp_path, "fp32", callbacks=[probe_fp32])
    assert torch.bfloat16 in probe_bf16.dtypes and probe_fp32.dtypes == {torch.float32}
    assert all(w.dtype == torch.float32 for w in w_bf16.values())  # weights stay fp32
    for a, b in zip(rows_bf16, rows_fp32):
        # same data, noise and init: bf16 rounding moves the loss by well under a percent
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.01)
        assert a["val_elbo"] == pytest.approx(b["val_elbo"], rel=0.01)
    assert rows_bf16[-1]["train_loss"] < rows_bf16[0]["train_loss"]  # and it learns


def test_compile_trains_to_the_eager_numbers(tmp_path):
    # inductor for real (about 30 s on 2 cores with a cold cache): the loss, its noise drawn
    # outside, and the binarization. A linear KL warm-up changes the weight every step: a
    # float weight would be baked into the graph and recompile it each time.
    if shutil.which("c++") is None:
        pytest.skip("torch.compile's inductor backend needs a C++ compiler")
    from torch._dynamo.utils import counters

    warm_up = ["train.kl_schedule=linear", "train.warmup_epochs=2"]
    counters.clear()
    rows_c, w_c = _train(tmp_path, "compiled", "train.compile=true", *warm_up)
    graphs = counters["stats"]["unique_graphs"]
    rows_e, w_e = _train(tmp_path, "eager", *warm_up)
    assert w_c.keys() == w_e.keys()  # no _orig_mod. prefixes: runs load as before
    for a, b in zip(rows_c, rows_e):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_elbo"] == pytest.approx(b["val_elbo"], rel=1e-5)
    assert _max_diff(w_c, w_e) < 1e-5
    # the loss and the binarization, each for the full batch and the epoch's last (270 = 8 x 32 + 14)
    assert graphs == 4


def test_compiled_binarization_draws_the_same_bits():
    if shutil.which("c++") is None:
        pytest.skip("torch.compile's inductor backend needs a C++ compiler")
    from vaelab.transforms import DynamicBinarize

    images = torch.randint(0, 256, (67, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    binarize = DynamicBinarize()
    eager = binarize(images, torch.Generator().manual_seed(5))  # 67 x 784 pixels: not a multiple of 3
    binarize.compile()
    assert torch.equal(binarize(images, torch.Generator().manual_seed(5)), eager)
    assert 0.3 < eager.mean() < 0.7