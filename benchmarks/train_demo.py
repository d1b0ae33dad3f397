"""Train the embedded demo model: CIFAR-style ResNet-20 on Fashion-MNIST (1x28x28).

Seeded and reproducible on the CPU. Writes the state_dict checkpoint and the shipped
calibration (512 training images) and validation (2,000 test images) sets into
``rescompile/assets/``, and prints the FP32 top-1 on the full 10,000-image test set.

    apt-get install dataset-fashion-mnist
    python benchmarks/train_demo.py --epochs 12
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rescompile.data.fashion_mnist import load_fashion_mnist
from rescompile.models.resnet_cifar import cifar_resnet

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set statistics (pixel / 255)
ASSETS = Path(__file__).resolve().parents[1] / "rescompile" / "assets"


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255.0 - MEAN) / STD).unsqueeze(1)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random crop with 2-pixel padding."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (2, 2, 2, 2), value=float(-MEAN / STD))
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + 28, dx : dx + 28]


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 1000):
        correct += int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum())
    return 100.0 * correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ASSETS)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train_img, train_lab = load_fashion_mnist("train")
    test_img, test_lab = load_fashion_mnist("test")
    x_train, y_train = to_tensor(train_img), torch.from_numpy(train_lab)
    x_test, y_test = to_tensor(test_img), torch.from_numpy(test_lab)

    model = cifar_resnet("resnet20", num_classes=10, in_channels=1)
    steps = args.epochs * (len(x_train) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(len(x_train) // args.batch_size):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            loss = F.cross_entropy(model(augment(x_train[idx], gen)), y_train[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate(model, x_test, y_test)
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} test top-1 {acc:.2f}% ({time.time() - start:.0f}s)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "demo_resnet20.pt")
    # Shipped data: raw uint8 pixels (preprocessing is part of the recipe, not the data).
    rng = np.random.default_rng(args.seed)
    calib_idx = np.sort(rng.choice(len(train_img), 512, replace=False))
    val_idx = np.sort(rng.choice(len(test_img), 2000, replace=False))
    np.savez_compressed(args.out / "demo_calib.npz", images=train_img[calib_idx], labels=train_lab[calib_idx])
    np.savez_compressed(args.out / "demo_val.npz", images=test_img[val_idx], labels=test_lab[val_idx])
    info = {
        "architecture": "resnet20",
        "in_channels": 1,
        "num_classes": 10,
        "input_size": [1, 28, 28],
        "mean": [MEAN],
        "std": [STD],
        "dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)",
        "fp32_top1_test10k": round(evaluate(model, x_test, y_test), 2),
        "training_command": (
            f"python benchmarks/train_demo.py --epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr} --seed {args.seed}"
        ),
        "torch": torch.__version__,
        "train_seconds": round(time.time() - start),
    }
    (args.out / "demo_resnet20.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
