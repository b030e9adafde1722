"""A hospital site's training script, in the shape of NVFlare's hello-pt (no gradleak here)."""

import argparse

import nvflare.client as flare
import torch
from model import Net
from torch import nn
from torch.optim import SGD

from data import train_dataset


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    flare.init()
    site_name = flare.system_info()["site_name"]
    batch_size = args.batch_size
    train_set = train_dataset(site_name)
    model = Net()
    loss = nn.CrossEntropyLoss()

    while flare.is_running():
        input_model = flare.receive()
        model.load_state_dict(input_model.params)
        model.train()
        optimizer = SGD(model.parameters(), lr=args.lr)  # fresh each round, as FedAvg assumes
        shuffle = torch.Generator().manual_seed(args.seed * 1000 + input_model.current_round)
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=shuffle)

        steps = 0
        for _ in range(args.epochs):
            for images, labels in train_loader:
                optimizer.zero_grad()
                cost = loss(model(images), labels)
                cost.backward()
                optimizer.step()
                steps += 1
        print(f"site={site_name} round={input_model.current_round} steps={steps} loss={cost.item():.4f}")

        flare.send(flare.FLModel(
            params=model.state_dict(),
            metrics={"train_loss": cost.item()},
            meta={"NUM_STEPS_CURRENT_ROUND": steps, "num_examples": len(train_set)},
        ))


if __name__ == "__main__":
    main()
