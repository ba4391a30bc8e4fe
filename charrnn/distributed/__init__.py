"""Processes: the machine's layout, the torch.distributed process group, the torchrun launcher."""
