"""The plain side: the loops a user's notebook would hold, written as the PyTorch tutorials write them.

Nothing here uses tuner: these are the baselines tuner's fast paths are measured against.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision import datasets
from torchvision import transforms as T


def plain_transforms(image_size: int, augment: bool):
    normalize = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    if augment:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    return T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), normalize])


def plain_model(weights: Path, num_classes: int, freeze: bool):
    model = torchvision.models.resnet50()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    if freeze:
        for p in model.parameters():
            p.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def plain_train(data: Path, weights: Path, image_size: int, epochs: int, batch_size: int, head_only: bool,
                seed: int = 0, lr: float = 0.01) -> dict[str, Any]:
    """The PyTorch transfer-learning tutorial's loop: ImageFolder, DataLoader with its defaults,
    SGD with momentum, model.train() / model.eval(), a full forward pass every batch of every epoch.

    Returns wall time, per-epoch training-phase seconds, best and final validation accuracy, and the
    best epoch's weights (kept in memory during the loop, as the tutorial does).
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    train_ds = datasets.ImageFolder(data / "train", plain_transforms(image_size, augment=True))
    val_ds = datasets.ImageFolder(data / "val", plain_transforms(image_size, augment=False))
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=batch_size)
    model = plain_model(weights, len(train_ds.classes), freeze=head_only)
    params = model.fc.parameters() if head_only else model.parameters()
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()
    best_acc, best_state, accs, train_seconds = -1.0, None, [], []
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        train_seconds.append(time.perf_counter() - t0)
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model(x).argmax(1) == y).sum())
        acc = correct / len(val_ds)
        accs.append(acc)
        if acc > best_acc:
            best_acc, best_state = acc, copy.deepcopy(model.state_dict())
    return {"seconds": time.perf_counter() - start, "train_seconds": train_seconds, "best_val_acc": best_acc,
            "final_val_acc": accs[-1], "val_accs": accs, "n_train": len(train_ds), "n_val": len(val_ds),
            "best_state": best_state, "classes": train_ds.classes}
