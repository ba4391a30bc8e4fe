"""Processes: the machine's layout, the torch.distributed process group, and the torchrun launcher."""
