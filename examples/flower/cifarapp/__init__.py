"""cifarapp: a Flower / PyTorch app."""
