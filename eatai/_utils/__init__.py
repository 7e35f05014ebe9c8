"""Private helpers that several of eatai's packages use: argument checks, torch.distributed, atomic files, progress."""
